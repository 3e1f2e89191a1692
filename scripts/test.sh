#!/usr/bin/env bash
# The whole test suite: unit tests, property tests, the multi-process cluster tests and the
# container tier (cluster-tests/tests/containers.rs: the compose fleet on the Docker engine).
# The cluster tests run the built `zone-egress` binary and the container tier runs the images,
# so binaries and images are built first (the image build is a static release build).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-deps.sh
cargo build --workspace --bins
deploy/docker/build.sh zone-egress:dev
deploy/compose/demo-image.sh zone-egress-demo:dev
deploy/compose/prometheus-image.sh zone-egress-prometheus:dev
cargo test --workspace
