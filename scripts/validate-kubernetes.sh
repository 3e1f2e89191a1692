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
