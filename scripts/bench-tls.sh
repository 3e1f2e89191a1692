#!/usr/bin/env bash
# The terminating TLS stack, measured side by side in one run (BENCHMARKS.md "Terminating TLS
# stack"): this tree (BoringSSL), earlier commits that terminated with rustls and with OpenSSL
# 3.0, and HAProxy (nbthread 2), all in front of the same nginx and driven by the same mTLS load
# client (cluster-tests/src/bin/bench-tls.rs). Also: clean release build time of each tree and
# its binary size.
#   scripts/bench-tls.sh [SECONDS]
# env: ZE_BENCH_COMMITS  label=commit pairs (default "rustls=263152d openssl=f470ed3")
#      ZE_BENCH_CLEAN=0  reuse the release trees under target/bench-<label> (build_s is then not
#                        a clean-build time)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
commits=${ZE_BENCH_COMMITS:-rustls=263152d openssl=f470ed3}
scripts/build-deps.sh
# haproxy and nginx for the anchors; libssl-dev for the OpenSSL commit.
if ! command -v haproxy >/dev/null || [[ ! -x /usr/sbin/nginx ]] || ! dpkg -s libssl-dev >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq haproxy nginx libssl-dev pkg-config >/dev/null
fi
worktrees=()
cleanup() { for w in "${worktrees[@]}"; do git worktree remove --force "$w" || true; done; }
trap cleanup EXIT

build() { # label source-dir -> prints "label build_s=.. binary_bytes=.."
  local target="$PWD/target/bench-$1"
  [[ ${ZE_BENCH_CLEAN:-1} == 0 ]] || rm -rf "$target"
  local t0=$SECONDS
  (cd "$2" && CARGO_TARGET_DIR="$target" cargo build --release --locked --bin zone-egress >/dev/null 2>&1)
  echo "$1 build_s=$((SECONDS - t0)) binary_bytes=$(stat -c %s "$target/release/zone-egress")"
}
labels=()
for pair in $commits; do
  label=${pair%%=*}
  wt=$(mktemp -d)/tree
  git worktree add --detach "$wt" "${pair#*=}" >/dev/null
  worktrees+=("$wt")
  build "$label" "$wt"
  labels+=("$label")
done
build boringssl "$PWD"
labels+=(boringssl)
[[ ${ZE_BENCH_CLEAN:-1} == 0 ]] && echo "(ZE_BENCH_CLEAN=0: build_s is not a clean-build time)"
cargo build --release -p cluster-tests --bin bench-tls >/dev/null 2>&1
bench=target/release/bench-tls
for label in "${labels[@]}"; do
  http=()
  [[ $label == boringssl ]] && http=(--http)
  ZONE_EGRESS_BIN="target/bench-$label/release/zone-egress" $bench --label "$label" --seconds "$secs" "${http[@]}"
done
ZONE_EGRESS_BIN=target/bench-boringssl/release/zone-egress $bench --label haproxy --haproxy --seconds "$secs"
