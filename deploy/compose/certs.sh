#!/usr/bin/env bash
# Makes what deploy/compose/docker-compose.yml mounts, under deploy/compose/state/:
#   secrets/admin.token  admin bearer token        secrets/gossip.key  gossip cluster key
#   certs/link-ca, certs/link-egress, certs/link-ingress   zone-link CA and leaf certs (DNS ze-link)
#   certs/mesh-ca, certs/client, certs/backend             mesh "default" CA, client and backend certs
#   certs/external-ca, certs/external                      the external service's own TLS
# Uses $ZONE_EGRESS_BIN if set, else runs `zone-egress` from the image ($IMAGE, default
# zone-egress:dev). Never overwrites: remove state/ to start over.
set -euo pipefail
cd "$(dirname "$0")"
image=${IMAGE:-zone-egress:dev}
out=${ZE_STATE:-$PWD/state}
if [[ -e $out/certs/link-ca/ca.pem ]]; then echo "state/ exists, keeping it"; exit 0; fi
mkdir -p "$out/certs" "$out/secrets"
if [[ -n ${ZONE_EGRESS_BIN:-} ]]; then
  ze() { (cd "$out" && "$ZONE_EGRESS_BIN" "$@"); }
else
  # The image runs as 65532; let it write state/, then give the files back to the caller.
  chmod 0777 "$out" "$out/certs" "$out/secrets"
  ze() { docker run --rm --user "$(id -u):$(id -g)" -v "$out:/out" -w /out --entrypoint /zone-egress "$image" "$@"; }
fi
ze keygen >"$out/secrets/gossip.key"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$out/secrets/admin.token"
ze pki init-ca --out certs/link-ca --name zone-link >/dev/null
for role in egress ingress; do
  ze pki issue --ca certs/link-ca --spiffe "spiffe://zone-link/$role" --dns ze-link \
    --validity 365d --out "certs/link-$role" >/dev/null
done
ze pki init-ca --out certs/mesh-ca --name mesh-default >/dev/null
backend_sni=$(ze sni --mesh default --service backend --port 8443)
ze pki issue --ca certs/mesh-ca --spiffe spiffe://default/backend --dns "$backend_sni" \
  --validity 365d --out certs/backend >/dev/null
ze pki init-ca --out certs/external-ca --name external-ca >/dev/null
ze pki issue --ca certs/external-ca --spiffe spiffe://external/web --dns external \
  --validity 365d --out certs/external >/dev/null
ze pki issue --ca certs/mesh-ca --spiffe spiffe://default/client --validity 365d --out certs/client >/dev/null
# The nodes run as uid 65532: the mounted files must be readable by it. Key files are 0600 from
# `pki issue`; hand them to 65532 when we can, else make them readable (demo only).
if [[ $(id -u) == 0 ]]; then
  chown -R 65532:65532 "$out/certs" "$out/secrets"
  chmod -R go-rwx "$out/certs" "$out/secrets"
  chmod 0755 "$out" "$out/certs" "$out/secrets"; find "$out/certs" -type d -exec chmod 0755 {} +
else
  chmod -R a+rX "$out"
fi
chmod 0755 "$out"
echo "wrote $out"
