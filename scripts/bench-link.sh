#!/usr/bin/env bash
# Cross-zone link benchmark: QUIC link vs a classic TCP+TLS hop (haproxy → haproxy).
#
# Usage: scripts/bench-link.sh [--rtts "0 10 20 40"] [extra bench-link args, e.g. --megabytes 32]
#
# Runs bench-link on plain loopback, then for each RTT between two network namespaces
# (ze-bench-a: egress, haproxy #1, curl, bench-link; ze-bench-b: ingress, haproxy #2, nginx)
# joined by the userspace delay line (cluster-tests/src/bin/delay-line.rs: two TUN devices,
# every packet held RTT/2 each way, MTU 1500; this kernel has no sch_netem). Before each run it
# prints the RTT ping measures through the line. Needs root (ip netns, /dev/net/tun). The
# namespaces are removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

rtts="0 10 20 40"
if [[ ${1:-} == --rtts ]]; then
    rtts=$2
    shift 2
fi
A=ze-bench-a
B=ze-bench-b
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v ping >/dev/null || need+=(iputils-ping)
if ((${#need[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
scripts/build-deps.sh
cargo build --release --bins
BIN="$(realpath "${CARGO_TARGET_DIR:-target}")/release/bench-link"
LINE="$(realpath "${CARGO_TARGET_DIR:-target}")/release/delay-line"

echo "### loopback (no delay line)"
"$BIN" --rtt-ms 0 --net loopback "$@"

line_pid=
cleanup() {
    if [[ -n $line_pid ]]; then kill "$line_pid" 2>/dev/null; wait "$line_pid" 2>/dev/null || true; fi
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    line_pid=
}
trap cleanup EXIT
for rtt in $rtts; do
    cleanup
    ip netns add "$A"
    ip netns add "$B"
    ready=$(mktemp -u)
    "$LINE" --ns-a "$A" --ns-b "$B" --delay-ms "$(echo "$rtt / 2" | bc -l)" --ready-file "$ready" &
    line_pid=$!
    for _ in $(seq 100); do [[ -e $ready ]] && break; sleep 0.1; done
    [[ -e $ready ]] || { echo "the delay line did not come up" >&2; exit 1; }
    rm -f "$ready"
    echo "### RTT $rtt ms (two namespaces, userspace delay line)"
    ip netns exec "$A" ping -q -c 20 -i 0.05 10.250.0.2 | tail -1
    ip netns exec "$A" "$BIN" --rtt-ms "$rtt" --net "netns + delay line" --netns-b "$B" --addr-b 10.250.0.2 "$@"
done
