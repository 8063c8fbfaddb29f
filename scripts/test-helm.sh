#!/usr/bin/env bash
# Lint, render, schema-validate and scan the Helm chart (helm/casola-auth) with real Helm v4
# (helm-python-sdk), kubernetes-validate and checkov. Needs python3 (3.10+) and PyPI; no
# helm binary, cluster, chart repository or other network access.
#
#   VENV=path   virtualenv to create or reuse (default .venv at the repository root)
#   extra arguments are passed to pytest, e.g. scripts/test-helm.sh -k checkov
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
REQUIREMENTS=tests/helm/requirements.txt

# shellcheck source=scripts/lib/suite.sh
source scripts/lib/suite.sh
ensure_venv "$VENV" "$REQUIREMENTS"

export CKV_SKIP_PACKAGE_UPDATE_CHECK=true BC_SKIP_MAPPING=TRUE
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/helm "$@"
