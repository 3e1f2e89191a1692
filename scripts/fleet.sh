#!/usr/bin/env bash
# Builds zone-egress and starts a local 3-node egress fleet of zone "zone-a" on loopback.
#
#   scripts/fleet.sh            build (release), start, print how to query, run until Ctrl-C
#   scripts/fleet.sh --smoke    start, wait until every node sees all 3 ready, print, stop
#
# Node i (1..3) uses admin 127.0.0.1:$((ZE_ADMIN_BASE+i-1)), gossip UDP 127.0.0.1:$((ZE_GOSSIP_BASE+i-1)),
# egress listener 127.0.0.1:$((ZE_LISTEN_BASE+i-1)); every node runs the embedded default config
# plus these flags. Data and logs go to .fleet/ (override with ZE_FLEET_DIR).
# ZE_PROFILE=debug builds faster than the default release.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${ZE_PROFILE:-release}
admin_base=${ZE_ADMIN_BASE:-9901}
gossip_base=${ZE_GOSSIP_BASE:-7946}
listen_base=${ZE_LISTEN_BASE:-10002}
dir=${ZE_FLEET_DIR:-.fleet}
smoke=false
[[ "${1:-}" == "--smoke" ]] && smoke=true

scripts/build-deps.sh
if [[ "$profile" == release ]]; then
  cargo build --release --bin zone-egress
else
  cargo build --bin zone-egress
fi
bin="${CARGO_TARGET_DIR:-target}/$profile/zone-egress"

mkdir -p "$dir"
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT

for i in 1 2 3; do
  name="egress-$i"
  seed=()
  [[ $i -gt 1 ]] && seed=(--seed "127.0.0.1:$gossip_base")
  "$bin" run --name "$name" --zone zone-a \
    --admin "127.0.0.1:$((admin_base + i - 1))" \
    --gossip "127.0.0.1:$((gossip_base + i - 1))" \
    --listen "127.0.0.1:$((listen_base + i - 1))" \
    --data-dir "$dir/$name" "${seed[@]}" >"$dir/$name.log" 2>&1 &
  pids+=("$!")
done

# Wait (bounded) until every node answers ready and lists all three egresses.
deadline=$((SECONDS + 60))
for i in 1 2 3; do
  url="http://127.0.0.1:$((admin_base + i - 1))"
  until curl -fsS "$url/ready" >/dev/null 2>&1 &&
        [[ "$(curl -fsS "$url/v1/zone-egresses" | grep -o '"type":"ZoneEgress"' | wc -l)" -eq 3 ]] &&
        [[ "$(curl -fsS "$url/v1/members" | grep -o '"ready":true' | wc -l)" -eq 3 ]]; do
    if (( SECONDS > deadline )); then
      echo "fleet did not converge within 60 s; logs in $dir/" >&2
      tail -n 20 "$dir"/*.log >&2
      exit 1
    fi
    sleep 0.2 # // poll interval of a bounded wait, not synchronisation
  done
done

"$bin" get members --admin "http://127.0.0.1:$admin_base"
cat <<EOT

zone-a is up: 3 egress nodes. Query any node, for example:
  $bin get members       --admin http://127.0.0.1:$((admin_base + 1))
  $bin get zone-egresses --admin http://127.0.0.1:$((admin_base + 2)) -o yaml
  curl -s http://127.0.0.1:$admin_base/v1/zone-egresses
  curl -s http://127.0.0.1:$admin_base/metrics | grep zone_egress_members
Logs: $dir/egress-{1,2,3}.log. Ctrl-C drains and stops the fleet.
EOT

if $smoke; then
  exit 0
fi
wait
