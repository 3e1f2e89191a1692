#!/usr/bin/env bash
# Per-write CPU of the store (issue 14): bench-put-cpu.sh BINARY LABEL N
# Starts 3 nodes of one zone on loopback ports 29901-29923 (fixed: stop other users of them),
# applies a Mesh and N ExternalServices in one batch, then sends sequential PUTs of existing ones
# through node 1 for 10 s (curl in a loop: the client tops out near 100-120 PUTs/s) and prints
# PUTs/s and CPU per write of the writer and of one follower, read from /proc/<pid>/stat.
# Data in /tmp/prof/run-LABEL. Compare two builds in one run (absolute figures are noisy here).
set -u
B=$1; L=$2; N=$3; D=/tmp/prof/run-$L; rm -rf $D; mkdir -p $D
$B run --name n1 --zone z --admin 127.0.0.1:29901 --listen 127.0.0.1:29911 --gossip 127.0.0.1:29921 --data-dir $D/d1 > $D/n1.log 2>&1 &
for i in 2 3; do $B run --name n$i --zone z --admin 127.0.0.1:2990$i --listen 127.0.0.1:2991$i --gossip 127.0.0.1:2992$i --data-dir $D/d$i --seed 127.0.0.1:29921 > $D/n$i.log 2>&1 & done
for p in 29901 29902 29903; do for i in $(seq 1 100); do curl -fsS http://127.0.0.1:$p/ready >/dev/null 2>&1 && break; sleep 0.2; done; done
python3 - "$N" "$D" <<'PY'
import sys
n, d = int(sys.argv[1]), sys.argv[2]
docs = ["type: Mesh\nname: default\n"] + [f"type: ExternalService\nmesh: default\nname: es-{i}\ntags: {{ kuma.io/service: es-{i} }}\nnetworking: {{ address: 'es-{i}.example.org:443' }}\n" for i in range(n)]
open(f"{d}/batch.yaml", "w").write("---\n".join(docs))
PY
curl -fsS -o /dev/null -X POST -H 'Content-Type: application/yaml' --data-binary @$D/batch.yaml http://127.0.0.1:29901/v1/apply
for p in 29902 29903; do for i in $(seq 1 200); do c=$(curl -fsS http://127.0.0.1:$p/v1/meshes/default/external-services | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'); [ "$c" = "$N" ] && break; sleep 0.3; done; done
P1=$(pgrep -f "run --name n1 "); P2=$(pgrep -f "run --name n2 ")
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
c1=$(cpu $P1); c2=$(cpu $P2); start=$(date +%s%N); n=0; end=$(( $(date +%s) + 10 ))
while [ $(date +%s) -lt $end ]; do i=$((n % N)); printf "type: ExternalService\nmesh: default\nname: es-$i\ntags: { kuma.io/service: es-$i, v: \"$n\" }\nnetworking: { address: 'es-$i.example.org:443' }\n" | curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/yaml' --data-binary @- http://127.0.0.1:29901/v1/meshes/default/external-services/es-$i; n=$((n+1)); done
el=$(( ($(date +%s%N)-start)/1000000 ))
# The follower's CPU counts until it has merged the last write (polled, 10 s at most).
last=$(( (n - 1) % N ))
for i in $(seq 1 100); do curl -fsS http://127.0.0.1:29902/v1/meshes/default/external-services/es-$last | grep -q "\"v\":\"$((n - 1))\"" && break; sleep 0.1; done
 d1=$(( $(cpu $P1)-c1 )); d2=$(( $(cpu $P2)-c2 ))
echo "$L N=$N: $n PUTs in ${el} ms = $(( n*1000/el ))/s; CPU per write: writer $(( d1*10000/n )) us, follower $(( d2*10000/n )) us"
pkill -9 -f 'zone-egress run --name n'; for i in $(seq 1 50); do ss -ltn | grep -q ':2990[123] ' || break; sleep 0.2; done
