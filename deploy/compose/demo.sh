#!/usr/bin/env bash
# After `docker-compose up -d`: applies zone-a's and zone-b's resources through the nodes' admin
# APIs (docker exec), then sends two requests from the host through the first egress replica
# (its listener is published on an ephemeral port of 127.0.0.1):
#   1. to zone-b's backend: egress -> QUIC link -> ingress -> backend (TLS passed through)
#   2. to the external service: the egress terminates the mesh mTLS, originates TLS to `external`
# Needs curl on the host. COMPOSE (default: docker-compose, else "docker compose").
set -euo pipefail
cd "$(dirname "$0")"
if [[ -z ${COMPOSE:-} ]]; then
  if command -v docker-compose >/dev/null; then COMPOSE=docker-compose; else COMPOSE="docker compose"; fi
fi
state=${ZE_STATE:-state}
certs=$state/certs
token=$(cat "$state/secrets/admin.token")
ze() { local svc=$1; shift; $COMPOSE exec -T -e ZONE_EGRESS_TOKEN="$token" $svc /zone-egress "$@"; }
wait_for() { # wait_for DESCRIPTION COMMAND...: bounded poll
  local what=$1; shift
  local deadline=$((SECONDS + 90))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS > deadline )); then echo "timed out waiting for $what" >&2; exit 1; fi
    sleep 0.5 # poll interval of a bounded wait
  done
}
egresses=$($COMPOSE ps -q egress | wc -l)
for i in $(seq 1 "$egresses"); do wait_for "egress replica $i ready" ze "--index=$i egress" health; done
for svc in ingress-b1 ingress-b2; do wait_for "$svc ready" ze "$svc" health; done
egress="--index=1 egress"
listener=$($COMPOSE port --index=1 egress 10002 | tr -d '\r')

ze ingress-b1 apply -f - <resources/zone-b.yaml
ze "$egress" apply -f - <resources/zone-a.yaml
backend_sni=$(ze "$egress" sni --mesh default --service backend --port 8443 | tr -d '\r')
external_sni=$(ze "$egress" sni --mesh default --service external --port 8443 --kind mes | tr -d '\r')
routes() { ze "$egress" inspect route --sni "$1" | grep -qi "$2"; }
wait_for "the backend route" routes "$backend_sni" passthrough
ze "$egress" get members
ze "$egress" get links
curl_mesh() { curl -sS --fail --max-time 10 "https://$1/" --connect-to "$1:443:$listener" \
  --cacert $certs/mesh-ca/ca.pem --cert $certs/client/cert.pem --key $certs/client/key.pem; }
echo "== host -> egress ($listener) -> link -> zone-b ingress -> backend ($backend_sni)"
wait_for "a request to the backend" curl_mesh "$backend_sni"
page=$(curl_mesh "$backend_sni"); grep -m1 "s_server" <<<"$page"
echo "== host -> egress ($listener) -> external ($external_sni)"
wait_for "a request to the external service" curl_mesh "$external_sni"
page=$(curl_mesh "$external_sni"); grep -m1 "s_server" <<<"$page"
echo "traffic flows"
