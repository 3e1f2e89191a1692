#!/usr/bin/env bash
# Gossip under datagram loss: bench-gossip (release) with --watch-minutes inside a network
# namespace whose loopback drops LOSS percent of UDP datagrams at random (iptables `statistic`;
# this kernel has no netem). Gossip is the only UDP there; the admin API that bench-gossip polls
# is TCP and loses nothing. Prints convergence, false dead-marks over MINUTES, detection of a
# killed node, and the datagrams iptables dropped. Needs root.
#   scripts/bench-gossip-loss.sh [LOSS_PERCENT=5] [MINUTES=10] [NODES=30]
set -euo pipefail
cd "$(dirname "$0")/.."
loss=${1:-5}
minutes=${2:-10}
nodes=${3:-30}
ns=ze-gossip-loss
command -v iptables >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >/dev/null; }
scripts/build-deps.sh
cargo build --release --bin zone-egress --bin bench-gossip
bin="$(realpath "${CARGO_TARGET_DIR:-target}")/release"
ip netns del "$ns" 2>/dev/null || true
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
probability=$(python3 -c "print($loss / 100)")
ip netns exec "$ns" iptables -A INPUT -i lo -p udp -m statistic --mode random --probability "$probability" -j DROP
echo "loopback of $ns drops $loss % of UDP datagrams; $nodes nodes; $minutes min watched"
ZONE_EGRESS_BIN="$bin/zone-egress" ip netns exec "$ns" "$bin/bench-gossip" \
  --nodes "$nodes" --repeats 1 --watch-minutes "$minutes"
ip netns exec "$ns" iptables -L INPUT -v -n -x | awk 'NR > 2 { print "iptables dropped " $1 " UDP datagrams (" $2 " bytes)" }'
