#!/usr/bin/env bash
# Lines of non-test code per Rust source file (lines before a file's `#[cfg(test)]` module; files
# that are all tests count 0), largest first. `scripts/loc.sh 600` lists only files above 600.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-0}
for f in $(git ls-files "*.rs" | grep -v -e "/tests/" -e "/tests\.rs$" -e "_tests\.rs$" -e "/fuzz/"); do
  n=$(awk '/^#\[cfg\(test\)\]/{exit} {n++} END{print n+0}' "$f")
  echo "$n $f"
done | sort -rn | awk -v limit="$limit" '$1 > limit'
