#!/usr/bin/env bash
# The container tier's chaos soak (cluster-tests/src/bin/chaos-soak.rs): the two-zone compose
# fleet under two client loops (external service, zone-b's backend over a link) and a writer,
# while one node at a time is killed, restarted or cut off a network, for MINUTES (default 10).
# Prints failed connections outside the detection windows, lost writes and memory per node, and
# exits 1 when either count is not 0 or a fault was not detected or healed in time (2 when the
# harness itself failed). Not part of scripts/test.sh (it runs for minutes).
#   scripts/chaos-soak.sh [MINUTES] [chaos-soak args, e.g. --seed 7]
# Needs the Docker engine with docker-compose, curl and root-free access to the bridge networks.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
shift || true
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
command -v docker-compose >/dev/null || { apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; }
scripts/build-deps.sh
cargo build --bin zone-egress --bin chaos-soak
deploy/docker/build.sh zone-egress:dev
deploy/compose/demo-image.sh zone-egress-demo:dev
deploy/compose/prometheus-image.sh zone-egress-prometheus:dev
exec "${CARGO_TARGET_DIR:-target}/debug/chaos-soak" --minutes "$minutes" "$@"
