#!/usr/bin/env bash
# Every side-by-side benchmark of issue 17 in one run, on this machine, with the same load
# client and origin for every target (BENCHMARKS.md "Side by side"):
#   1. the terminated path (mTLS termination, byte splice) — zone-egress vs HAProxy 2.6
#      (nbthread 2) vs nginx (stream module, 2 workers);
#   2. the HTTP path (kuma.io/protocol: http, pooled upstreams) — zone-egress vs nginx
#      proxy_pass with keep-alive upstreams;
#   3. a flood (slow ClientHellos and a handshake flood) against a legit client's p99;
#   4. the cross-zone link — QUIC link vs a 2-hop HAProxy TCP+TLS chain, on loopback and at
#      10/20/40 ms RTT through the userspace delay line (scripts/bench-link.sh).
# Prints key=value lines per target, then one table with each figure as a ratio to HAProxy.
#   scripts/bench.sh [SECONDS]          (default 10 s per rate figure)
# env: ZE_BENCH_RTTS="10 20 40"  RTTs of the link runs ("" skips the link)
#      ZE_BENCH_IDLE=9000          idle connections held for the memory figure
# Not part of scripts/test.sh: it takes ~15 minutes and the whole machine.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
idle=${ZE_BENCH_IDLE:-9000}
rtts=${ZE_BENCH_RTTS-10 20 40}
need=()
command -v haproxy >/dev/null || need+=(haproxy)
[[ -x /usr/sbin/nginx ]] || need+=(nginx)
[[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || need+=(libnginx-mod-stream)
command -v ping >/dev/null || need+=(iputils-ping)
command -v bc >/dev/null || need+=(bc)
if ((${#need[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
scripts/build-deps.sh
cargo build --release --bins
target="$(realpath "${CARGO_TARGET_DIR:-target}")/release"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "### terminated and HTTP paths ($secs s per rate, $idle idle connections; $(nproc) cores; commit $(git rev-parse --short HEAD))"
ZONE_EGRESS_BIN="$target/zone-egress" "$target/bench-tls" --label zone-egress --http --seconds "$secs" --idle "$idle" | tee -a "$out"
ZONE_EGRESS_BIN="$target/zone-egress" "$target/bench-tls" --label haproxy --haproxy --seconds "$secs" --idle "$idle" | tee -a "$out"
ZONE_EGRESS_BIN="$target/zone-egress" "$target/bench-tls" --label nginx --nginx --http --seconds "$secs" --idle "$idle" | tee -a "$out"
python3 - "$out" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    label, *pairs = line.split()
    for pair in pairs:
        key, _, value = pair.partition("=")
        rows.setdefault(label, {})[key] = float(value)
figures = [
    ("new connections/s", "new_conns_per_s", True),
    ("new connection p99 ms", "new_conn_p99_ms", False),
    ("keep-alive 1 KiB rps", "keepalive_rps", True),
    ("keep-alive p99 ms", "keepalive_p99_ms", False),
    ("bulk 1 flow MB/s", "bulk_mb_per_s", True),
    ("bulk 1 flow CPU s/GB", "bulk_cpu_s_per_gb", False),
    ("bulk 8 flows MB/s", "bulk8_mb_per_s", True),
    ("bulk 8 flows CPU s/GB", "bulk8_cpu_s_per_gb", False),
    ("RSS per idle connection KiB", "idle_kib_per_conn", False),
    ("HTTP keep-alive rps (64 conns)", "http_pool_rps", True),
    ("HTTP p99 ms", "http_pool_p99_ms", False),
]
labels = [l for l in ("zone-egress", "haproxy", "nginx") if l in rows]
print()
print("| figure | " + " | ".join(labels) + " | zone-egress vs HAProxy | zone-egress vs nginx |")
print("|---|" + "---:|" * (len(labels) + 2))
for name, key, higher in figures:
    values = [rows[l].get(key) for l in labels]
    cells = ["—" if v is None else f"{v:,.2f}" if v < 100 else f"{v:,.0f}" for v in values]
    ratios = []
    ours = rows.get("zone-egress", {}).get(key)
    for anchor in ("haproxy", "nginx"):
        theirs = rows.get(anchor, {}).get(key)
        if ours is None or theirs is None or theirs == 0 or ours == 0:
            ratios.append("—")
        else:
            # Always "how much better": >1 means zone-egress is ahead.
            r = ours / theirs if higher else theirs / ours
            ratios.append(f"{r:.2f}×")
    print(f"| {name} | " + " | ".join(cells + ratios) + " |")
print("\nRatios read \"zone-egress is N× as good\": rates divided, latencies, CPU and memory inverted.")
PY
echo
echo "### flood: 9,000 slow ClientHellos + 16 certificate-less handshake loops from 127.0.0.2, legit client on 127.0.0.1"
ZONE_EGRESS_BIN="$target/zone-egress" "$target/bench-tls" --label flood --seconds "$secs" --flood-slow 9000 --flood-attackers 16
if [[ -n $rtts ]]; then
    echo
    echo "### cross-zone link"
    scripts/bench-link.sh --rtts "$rtts" --megabytes 32 --repeats 1 --ttfb-samples 20
fi
