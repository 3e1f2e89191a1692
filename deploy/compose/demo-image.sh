#!/usr/bin/env bash
# Builds zone-egress-demo:dev, the image of the compose file's destination and external services:
# the host's /usr/bin/openssl and the libraries it links, on an empty root (no registry pull).
# `openssl s_server -www` answers HTTPS requests with a status page.
set -euo pipefail
tag=${1:-zone-egress-demo:dev}
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/bin" "$ctx/rootfs/etc" "$ctx/rootfs/tmp" "$ctx/rootfs/usr/lib/ssl"
cp /usr/bin/openssl "$ctx/rootfs/usr/bin/"
for lib in $(ldd /usr/bin/openssl | grep -o '/[^ ]*'); do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done
cp /usr/lib/ssl/openssl.cnf "$ctx/rootfs/usr/lib/ssl/" 2>/dev/null || true
printf 'root:x:0:0:root:/:/usr/bin/openssl\ndemo:x:65532:65532:demo:/tmp:/usr/bin/openssl\n' >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\ndemo:x:65532:\n' >"$ctx/rootfs/etc/group"
printf 'hosts: files dns\n' >"$ctx/rootfs/etc/nsswitch.conf"
chmod 1777 "$ctx/rootfs/tmp"
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
USER 65532:65532
ENTRYPOINT ["/usr/bin/openssl"]
DOCKERFILE
docker build -q -t "$tag" "$ctx"
echo "built $tag"
