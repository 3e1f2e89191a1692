#!/usr/bin/env bash
# Builds zone-egress-prometheus:dev for the compose file's `monitoring` profile: the host's
# /usr/bin/prometheus (Debian's `prometheus` package) and the libraries it links, on an empty
# root (no registry pull).
set -euo pipefail
tag=${1:-zone-egress-prometheus:dev}
command -v prometheus >/dev/null || { echo "prometheus is not installed: apt-get install prometheus" >&2; exit 1; }
bin=$(command -v prometheus)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/bin" "$ctx/rootfs/etc/prometheus" "$ctx/rootfs/tmp" "$ctx/data"
cp "$bin" "$ctx/rootfs/usr/bin/prometheus"
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done
printf 'root:x:0:0:root:/:/usr/bin/prometheus\nprometheus:x:65532:65532:prometheus:/prometheus:/usr/bin/prometheus\n' >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nprometheus:x:65532:\n' >"$ctx/rootfs/etc/group"
printf 'hosts: files dns\n' >"$ctx/rootfs/etc/nsswitch.conf"
chmod 1777 "$ctx/rootfs/tmp"
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
# The TSDB directory, writable by the unprivileged user (COPY makes files root's otherwise).
COPY --chown=65532:65532 data/ /prometheus/
USER 65532:65532
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
DOCKERFILE
docker build -q -t "$tag" "$ctx"
echo "built $tag"
