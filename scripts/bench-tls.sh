#!/usr/bin/env bash
# The terminating TLS stack, measured side by side in one run (BENCHMARKS.md "Terminating TLS
# stack"): this tree (OpenSSL termination), the last commit that terminated with rustls, and
# HAProxy (nbthread 2), all in front of the same nginx and driven by the same mTLS load client
# (cluster-tests/src/bin/bench-tls.rs). Also: clean release build time of each tree, binary size.
#   scripts/bench-tls.sh [SECONDS]        env: ZE_RUSTLS_COMMIT (default 263152d),
#                                         ZE_BENCH_CLEAN=0 (reuse the two release trees),
#                                         ZE_BENCH_EXTRA="label=/path/zone-egress ..." (more builds,
#                                         e.g. a BoringSSL experiment)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
base=${ZE_RUSTLS_COMMIT:-263152d}
scripts/build-deps.sh
if ! command -v haproxy >/dev/null || [[ ! -x /usr/sbin/nginx ]]; then
  apt-get update -qq && apt-get install -y -qq haproxy nginx >/dev/null
fi
wt=$(mktemp -d)/rustls-tree
git worktree add --detach "$wt" "$base" >/dev/null
trap 'git worktree remove --force "$wt"' EXIT

build() { # dir target-dir -> seconds of a clean release build of the node binary
  [[ ${ZE_BENCH_CLEAN:-1} == 0 ]] || rm -rf "$2"
  local t0=$SECONDS
  (cd "$1" && CARGO_TARGET_DIR="$2" cargo build --release --locked --bin zone-egress >/dev/null 2>&1)
  echo $((SECONDS - t0))
}
old_build=$(build "$wt" "$PWD/target/bench-rustls")
new_build=$(build "$PWD" "$PWD/target/bench-openssl")
cargo build --release -p cluster-tests --bin bench-tls >/dev/null 2>&1
cargo build --release -p zone-egress --bin zone-egress >/dev/null 2>&1
bench=target/release/bench-tls
[[ ${ZE_BENCH_CLEAN:-1} == 0 ]] && echo "(not clean builds: build_s is not a clean-build time)"
echo "rustls build_s=$old_build binary_bytes=$(stat -c %s target/bench-rustls/release/zone-egress)"
echo "openssl build_s=$new_build binary_bytes=$(stat -c %s target/bench-openssl/release/zone-egress)"
ZONE_EGRESS_BIN=target/bench-rustls/release/zone-egress $bench --label rustls --seconds "$secs"
ZONE_EGRESS_BIN=target/bench-openssl/release/zone-egress $bench --label openssl --seconds "$secs" --http
for extra in ${ZE_BENCH_EXTRA:-}; do
  echo "${extra%%=*} binary_bytes=$(stat -c %s "${extra#*=}")"
  ZONE_EGRESS_BIN="${extra#*=}" $bench --label "${extra%%=*}" --seconds "$secs" --http
done
ZONE_EGRESS_BIN=target/release/zone-egress $bench --label haproxy --haproxy --seconds "$secs"
