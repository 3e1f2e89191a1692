#!/usr/bin/env bash
# Two zones on this machine: zone-a (2 egress nodes) reaches a service of zone-b (2 ingress
# nodes) through a QUIC link, TLS passed through end to end.
#
#   scripts/two-zones.sh           build (release), set up, show a request going through, run until Ctrl-C
#   scripts/two-zones.sh --smoke   the same, then stop (CI runs this form)
#
# Node configs: config/two-zones/nodes/; resources: config/two-zones/resources/ (+ the zone-a
# Mesh written below, whose CA paths are absolute). Certificates go to config/two-zones/certs/,
# data and logs to .fleet/. ZE_PROFILE=debug builds faster.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${ZE_PROFILE:-release}
smoke=false
[[ "${1:-}" == "--smoke" ]] && smoke=true
scripts/build-deps.sh
if [[ "$profile" == release ]]; then cargo build --release --bin zone-egress; else cargo build --bin zone-egress; fi
bin="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/$profile/zone-egress"
cfg=config/two-zones
certs=$cfg/certs
mkdir -p .fleet

# Certificates: one link CA for the zone link, one mesh CA for mesh "default".
rm -rf "$certs"
"$bin" pki init-ca --out "$certs/link-ca" --name zone-link >/dev/null
for n in ingress-b1 ingress-b2 egress-a1 egress-a2; do
  "$bin" pki issue --ca "$certs/link-ca" --spiffe "spiffe://zone-link/$n" --dns ze-link --out "$certs/link-$n" >/dev/null
done
"$bin" pki init-ca --out "$certs/mesh-ca" --name mesh-default >/dev/null
sni=$("$bin" sni --mesh default --service backend --port 18443)
"$bin" pki issue --ca "$certs/mesh-ca" --spiffe spiffe://default/backend --dns "$sni" --out "$certs/backend" >/dev/null
"$bin" pki issue --ca "$certs/mesh-ca" --spiffe spiffe://default/client --out "$certs/client" >/dev/null

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT

# The destination "sidecar" in zone-b: an mTLS-capable server with the backend's mesh certificate.
openssl s_server -accept 127.0.0.1:18443 -cert "$certs/backend/cert.pem" -key "$certs/backend/key.pem" \
  -www -quiet >.fleet/backend.log 2>&1 &
pids+=("$!")
for n in ingress-b1 ingress-b2 egress-a1 egress-a2; do
  "$bin" run --config "$cfg/nodes/$n.yaml" >".fleet/$n.log" 2>&1 &
  pids+=("$!")
done

wait_for() { # wait_for DESCRIPTION COMMAND...: poll (bounded) until COMMAND succeeds
  local what=$1; shift
  local deadline=$((SECONDS + 60))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS > deadline )); then echo "timed out waiting for $what; logs in .fleet/" >&2; exit 1; fi
    sleep 0.2 # // poll interval of a bounded wait, not synchronisation
  done
}
for port in 9911 9912 9921 9922; do wait_for "admin :$port" curl -fsS "http://127.0.0.1:$port/ready"; done

"$bin" apply -f $cfg/resources/zone-b.yaml --admin http://127.0.0.1:9911
cat <<EOT | "$bin" apply -f - --admin http://127.0.0.1:9921
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
    - name: ca-1
      type: provided
      conf: { cert: { file: $PWD/$certs/mesh-ca/ca.pem }, key: { file: $PWD/$certs/mesh-ca/ca.key } }
routing: { zoneEgress: true }
EOT
"$bin" apply -f $cfg/resources/zone-a-ingresses.yaml --admin http://127.0.0.1:9921
routes() { curl -fsS "http://127.0.0.1:$1/v1/inspect/route?sni=$sni" | grep -q '"passthrough"'; }
wait_for "the route on egress-a1" routes 9921
wait_for "the route on egress-a2" routes 9922

"$bin" get links --admin http://127.0.0.1:9921
echo
echo "curl (a zone-a sidecar) -> egress-a2 -> QUIC link -> zone-b ingress -> backend:"
page=$(curl -sS --fail https://$sni/ --connect-to "$sni:443:127.0.0.1:10103" \
  --cacert $certs/mesh-ca/ca.pem --cert $certs/client/cert.pem --key $certs/client/key.pem)
echo "${page:0:300}"
echo
echo "The certificate the client sees is the destination's (the egress never decrypts):"
openssl s_client -connect 127.0.0.1:10102 -servername 'backend{mesh=default,version=v1}' </dev/null 2>/dev/null \
  | openssl x509 -noout -ext subjectAltName
cat <<EOT

Try:  $bin get links --admin http://127.0.0.1:9921
      $bin inspect route --sni '$sni' --admin http://127.0.0.1:9922
      $bin get zone-ingresses --admin http://127.0.0.1:9911
Logs: .fleet/{ingress-b1,ingress-b2,egress-a1,egress-a2}.log. Ctrl-C stops everything.
EOT
if $smoke; then exit 0; fi
wait
