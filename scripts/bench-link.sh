#!/usr/bin/env bash
# Cross-zone link benchmark: QUIC link vs a classic TCP+TLS hop (haproxy → haproxy).
#
# Usage: scripts/bench-link.sh [extra bench-link args, e.g. --megabytes 32 --repeats 1]
#
# Runs bench-link twice: on plain loopback (RTT 0), then with 20 ms RTT between two network
# namespaces (ze-bench-a: egress, haproxy #1, curl, bench-link; ze-bench-b: ingress, haproxy #2,
# nginx) joined by a veth pair 10.250.0.1 <-> 10.250.0.2 with netem delay 10ms on each end.
# Needs root (ip netns, tc). The namespaces are removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

A=ze-bench-a
B=ze-bench-b
if ! command -v haproxy >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy >/dev/null
fi
scripts/build-deps.sh
cargo build --release --bins
BIN="$(realpath "${CARGO_TARGET_DIR:-target}")/release/bench-link"

echo "### RTT 0 ms (loopback)"
"$BIN" --rtt-ms 0 --net loopback "$@"

cleanup() {
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
ip netns add "$A"
ip netns add "$B"
ip link add ze-bench-va type veth peer name ze-bench-vb
ip link set ze-bench-va netns "$A"
ip link set ze-bench-vb netns "$B"
ip -n "$A" addr add 10.250.0.1/24 dev ze-bench-va
ip -n "$B" addr add 10.250.0.2/24 dev ze-bench-vb
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set ze-bench-va up
ip -n "$B" link set ze-bench-vb up
# 10 ms each way = 20 ms RTT; a large queue so netem itself does not drop bulk traffic.
# Without sch_netem in the kernel ("Specified qdisc kind is unknown."), the run still happens
# over the veth pair (MTU 1500, separate stacks) but without delay, and says so in the table.
if tc -n "$A" qdisc add dev ze-bench-va root netem delay 10ms limit 100000 &&
    tc -n "$B" qdisc add dev ze-bench-vb root netem delay 10ms limit 100000; then
    RTT=20
    NET="veth netns + netem"
else
    echo "netem unavailable: no RTT emulation, measuring the veth pair without delay" >&2
    RTT=0
    NET="veth netns, no netem"
fi

echo "### RTT $RTT ms ($NET)"
ip netns exec "$A" "$BIN" --rtt-ms "$RTT" --net "$NET" --netns-b "$B" --addr-b 10.250.0.2 "$@"
