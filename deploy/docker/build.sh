#!/usr/bin/env bash
# Builds the zone-egress image from this workspace in one command: deploy/docker/build.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-zone-egress:dev}
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --bin zone-egress --target x86_64-unknown-linux-gnu
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp target/x86_64-unknown-linux-gnu/release/zone-egress "$ctx/"
cp deploy/docker/Dockerfile "$ctx/"
printf 'root:x:0:0:root:/:/zone-egress\nnonroot:x:65532:65532:nonroot:/data:/zone-egress\n' >"$ctx/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$ctx/group"
printf 'hosts: files dns\n' >"$ctx/nsswitch.conf"
docker build -t "$tag" "$ctx"
echo "built $tag"
