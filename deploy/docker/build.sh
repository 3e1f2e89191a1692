#!/usr/bin/env bash
# Builds the zone-egress image from this workspace in one command, with no registry pull:
#   deploy/docker/build.sh [TAG]          (default tag zone-egress:dev)
# Env: CARGO_TARGET_DIR (default target/deploy-static, kept apart from the usual target/ so a
# concurrent `cargo build` does not fight over the lock or rebuild everything with other RUSTFLAGS).
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-zone-egress:dev}
triple=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/deploy-static}
scripts/build-deps.sh
# The terminating TLS stack (BoringSSL) is built from source by boring-sys (needs cmake and
# libclang) and linked statically.
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --bin zone-egress --target "$triple"
bin="$CARGO_TARGET_DIR/$triple/release/zone-egress"

# The binary must not need a dynamic loader: the image has none.
if command -v file >/dev/null && ! file -L "$bin" | grep -q 'statically linked\|static-pie linked'; then
  echo "error: $bin is not statically linked" >&2
  file -L "$bin" >&2
  exit 1
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/etc" "$ctx/rootfs/tmp" "$ctx/data"
chmod 1777 "$ctx/rootfs/tmp"
install -m 0755 "$bin" "$ctx/rootfs/zone-egress"
cp deploy/docker/Dockerfile "$ctx/"
cat >"$ctx/rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/:/zone-egress
zone-egress:x:65532:65532:zone-egress:/data:/zone-egress
PASSWD
cat >"$ctx/rootfs/etc/group" <<'GROUP'
root:x:0:
zone-egress:x:65532:
GROUP
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$ctx/rootfs/etc/nsswitch.conf"
chmod 0644 "$ctx/rootfs/etc/"*
# The system trust store, for TLS origination to external services without caCert.
bundle=/etc/ssl/certs/ca-certificates.crt
if [[ ! -s $bundle ]]; then
  echo "error: $bundle is missing: install Debian's ca-certificates (the image's trust store)" >&2
  exit 1
fi
mkdir -p "$ctx/rootfs/etc/ssl/certs"
install -m 0644 "$bundle" "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt"
docker build -t "$tag" "$ctx"
echo "built $tag"
