#!/usr/bin/env bash
# Makes .venv with PyTorch (CPU) and Transformers: the independent reference the
# parity tests compare against. A dev-only tool, never a runtime dependency.
# Uses pip's configured indexes (the machine's local mirror here); idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || { echo "setup-python: no python3; reference tests will skip" >&2; exit 0; }
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch, transformers, safetensors, tokenizers, jinja2" 2>/dev/null; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch transformers safetensors tokenizers jinja2 numpy
