#!/usr/bin/env bash
# The whole test suite: unit tests, property tests and the multi-process cluster tests.
# The cluster tests run the built `zone-egress` binary, so binaries are built first.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
cargo test --workspace
