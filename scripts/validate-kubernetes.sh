#!/usr/bin/env bash
# Validates deploy/kubernetes/ against the Kubernetes API schema (strict: unknown fields are
# errors) with kubernetes-validate from PyPI, in a throwaway virtualenv. No cluster needed.
#   scripts/validate-kubernetes.sh [KUBERNETES_VERSION]     (default 1.37.0)
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-1.37.0}
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==1.37.0"
"$venv/bin/kubernetes-validate" --strict --kubernetes-version "$version" deploy/kubernetes/*.yaml

# The scrape path: every StatefulSet's config has admin.metrics_listen on all addresses, the admin
# API on loopback, a container port named `metrics` with that port number, and the Prometheus
# annotations naming it; so Prometheus scrapes the pod without reaching writes or zone data.
"$venv/bin/python" - <<'PY'
import sys, yaml
docs = [d for f in ("deploy/kubernetes/00-namespace-config.yaml", "deploy/kubernetes/egress.yaml",
                    "deploy/kubernetes/ingress.yaml") for d in yaml.safe_load_all(open(f)) if d]
configs = {k: yaml.safe_load(v) for d in docs if d["kind"] == "ConfigMap" for k, v in d["data"].items()}
problems, checked = [], 0
for d in docs:
    if d["kind"] != "StatefulSet":
        continue
    pod = d["spec"]["template"]
    container = pod["spec"]["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    config = configs[mount["subPath"]]
    name = d["metadata"]["name"]
    admin = config.get("admin", {})
    host, _, port = admin.get("metrics_listen", "").rpartition(":")
    if host != "0.0.0.0":
        problems.append(f"{name}: admin.metrics_listen is {admin.get('metrics_listen')!r}, not on the pod IP")
    if not admin.get("listen", "").startswith("127.0.0.1:"):
        problems.append(f"{name}: the admin API must stay on loopback")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if str(ports.get("metrics")) != port:
        problems.append(f"{name}: container port `metrics` is {ports.get('metrics')}, the config says {port}")
    notes = pod["metadata"].get("annotations", {})
    want = {"prometheus.io/scrape": "true", "prometheus.io/port": port, "prometheus.io/path": "/metrics"}
    for k, v in want.items():
        if notes.get(k) != v:
            problems.append(f"{name}: annotation {k} is {notes.get(k)!r}, want {v!r}")
    checked += 1
if checked != 2 or problems:
    sys.exit("scrape path check failed (%d StatefulSets):\n  " % checked + "\n  ".join(problems))
print(f"scrape path: {checked} StatefulSets expose admin.metrics_listen as port `metrics` with Prometheus annotations")
PY
