#!/usr/bin/env bash
# After `docker-compose up -d`: applies zone-a's and zone-b's resources through the nodes' admin
# APIs (docker exec, admin stays on each container's loopback), then sends two requests from the
# host through egress-a1 (published on 127.0.0.1:10002):
#   1. to zone-b's backend: egress-a1 -> QUIC link -> ingress -> backend (TLS passed through)
#   2. to the external service: egress-a1 terminates the mesh mTLS, originates TLS to `external`
# Needs curl on the host. COMPOSE (default: docker-compose, else "docker compose").
set -euo pipefail
cd "$(dirname "$0")"
if [[ -z ${COMPOSE:-} ]]; then
  if command -v docker-compose >/dev/null; then COMPOSE=docker-compose; else COMPOSE="docker compose"; fi
fi
certs=state/certs
token=$(cat state/secrets/admin.token)
ze() { local svc=$1; shift; $COMPOSE exec -T -e ZONE_EGRESS_TOKEN="$token" "$svc" /zone-egress "$@"; }
wait_for() { # wait_for DESCRIPTION COMMAND...: bounded poll
  local what=$1; shift
  local deadline=$((SECONDS + 90))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS > deadline )); then echo "timed out waiting for $what" >&2; exit 1; fi
    sleep 0.5 # poll interval of a bounded wait
  done
}
for svc in egress-a1 egress-a2 egress-a3 ingress-b1 ingress-b2; do wait_for "$svc ready" ze "$svc" health; done

ze ingress-b1 apply -f - <<'EOT'
type: Mesh
name: default
---
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 172.31.251.20       # the backend container (fixed in docker-compose.yml)
  inbound:
    - port: 8443
      tags: { kuma.io/service: backend, version: v1 }
EOT
ze egress-a1 apply -f - <<'EOT'
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
    - name: ca-1
      type: provided
      conf: { cert: { file: /etc/zone-egress/certs/mesh-ca/ca.pem }, key: { file: /etc/zone-egress/certs/mesh-ca/ca.key } }
routing: { zoneEgress: true }
---
type: ZoneIngress
name: zone-b-ingress
zone: zone-b
networking: { advertisedAddress: 172.31.250.11, advertisedPort: 10001 }
---
type: ExternalService
mesh: default
name: external
tags: { kuma.io/service: external }
networking:
  address: external:8443
  tls:
    enabled: true
    serverName: external
    caCert: { file: /etc/zone-egress/certs/external-ca/ca.pem }
EOT
backend_sni=$(ze egress-a1 sni --mesh default --service backend --port 8443 | tr -d '\r')
external_sni=$(ze egress-a1 sni --mesh default --service external --port 8443 --kind mes | tr -d '\r')
routes() { ze egress-a1 inspect route --sni "$1" | grep -qi "$2"; }
wait_for "the backend route" routes "$backend_sni" passthrough
ze egress-a1 get members
ze egress-a1 get links
curl_mesh() { curl -sS --fail --max-time 10 "https://$1/" --connect-to "$1:443:127.0.0.1:10002" \
  --cacert $certs/mesh-ca/ca.pem --cert $certs/client/cert.pem --key $certs/client/key.pem; }
echo "== host -> egress-a1 -> link -> zone-b ingress -> backend ($backend_sni)"
wait_for "a request to the backend" curl_mesh "$backend_sni"
page=$(curl_mesh "$backend_sni"); grep -m1 "s_server" <<<"$page"
echo "== host -> egress-a1 -> external ($external_sni)"
wait_for "a request to the external service" curl_mesh "$external_sni"
page=$(curl_mesh "$external_sni"); grep -m1 "s_server" <<<"$page"
echo "traffic flows"
