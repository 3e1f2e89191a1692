#!/usr/bin/env bash
# Runs every cargo-fuzz target of proto/fuzz for SECONDS each (default 30) and prints one line
# per target: executions, executions per second, corpus size, and whether it crashed. With
# --with-node it also runs node/fuzz (sealed gossip datagrams; admin API requests through the
# real router and store), whose build takes about ten minutes on two cores (the whole node:
# BoringSSL, quinn), so CI leaves it out. Seeds: <crate>/fuzz/seeds/<target>/ (real captures:
# ClientHellos from openssl and curl; admin requests as the CLI and the docs send them) and, for
# `resources`, every resource document under config/ and deploy/. Exits 1 on a crash (the input
# is in <crate>/fuzz/artifacts/<target>/).
#   scripts/fuzz.sh [SECONDS] [--with-node]   needs nightly and `cargo install cargo-fuzz`
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds=${1:-30}
crates=(proto)
[ "${2:-}" = --with-node ] && crates+=(node)
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: skipped (no nightly toolchain: rustup toolchain install nightly)"; exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: skipped (cargo-fuzz is not installed: cargo install --locked cargo-fuzz)"; exit 0
fi
failed=0
printf '%-18s %14s %10s %8s  %s\n' target executions "exec/s" corpus result
for crate in "${crates[@]}"; do
  cd "$root/$crate"
  targets=$(cargo +nightly fuzz list)
  cargo +nightly fuzz build -O >/dev/null 2>&1 || cargo +nightly fuzz build -O
  for target in $targets; do
    corpus=fuzz/corpus/$target
    mkdir -p "$corpus"
    if [ -d "fuzz/seeds/$target" ]; then cp -n fuzz/seeds/"$target"/* "$corpus"/ 2>/dev/null || true; fi
    if [ "$target" = resources ]; then
      find "$root/config" "$root/deploy" -name '*.yaml' -path '*resources*' -exec cp -n {} "$corpus"/ \; 2>/dev/null || true
    fi
    log=$(mktemp)
    if cargo +nightly fuzz run -O "$target" "$corpus" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
      result=ok
    else
      result="CRASH (see $crate/fuzz/artifacts/$target and $log)"; failed=1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    size=$(find "$corpus" -type f | wc -l)
    printf '%-18s %14s %10s %8s  %s\n' "$crate/$target" "$execs" "$rate" "$size" "$result"
    [ "$result" = ok ] && rm -f "$log"
  done
done
exit $failed
