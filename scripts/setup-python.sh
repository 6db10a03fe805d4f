#!/usr/bin/env bash
# Makes .venv with PyTorch (CPU) and Transformers: the independent reference the
# parity tests compare against. A dev-only tool, never a runtime dependency.
# Uses pip's configured indexes (the machine's local mirror here); idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || { echo "setup-python: no python3; reference tests will skip" >&2; exit 0; }
# lm-evaluation-harness (apps/cli/test/lm-eval.test.ts) and the modules its API and hf models import.
LM_EVAL_CHECK="import lm_eval, lm_eval.evaluator, lm_eval.models.openai_completions, lm_eval.models.huggingface, tenacity, aiohttp, requests"
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch, transformers, safetensors, tokenizers, jinja2" 2>/dev/null \
  && .venv/bin/python -c "$LM_EVAL_CHECK" 2>/dev/null; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Where pip is configured with local mirrors (extra-index-url / find-links), use them as
# the only indexes, so pip never waits on an index it cannot reach.
args=()
mirrors=$("$PY" -m pip config get global.extra-index-url 2>/dev/null || true)
links=$("$PY" -m pip config get global.find-links 2>/dev/null || "$PY" -m pip config get :env:.find-links 2>/dev/null || true)
if [ -n "$mirrors" ]; then
  first=1
  for m in $mirrors; do
    if [ $first = 1 ]; then args+=(--index-url "$m"); first=0; else args+=(--extra-index-url "$m"); fi
  done
fi
for l in $links; do args+=(--find-links "$l"); done
# Drops pip's known-harmless stderr, so that what a user reads as a failure is one: the
# warning a mirror that lacks a package prints per lookup, and the resolver's "ERROR" list of
# lm-eval's dependencies that --no-deps leaves out on purpose (below). Any other conflict still
# prints, under the resolver's heading.
pip_filter() {
  awk '
    /is ignored: it is neither a file nor a directory/ { next }
    /^ERROR: pip.s dependency resolver does not currently take into account/ { heading = $0; listing = 1; next }
    listing && /^lm-eval [^ ]+ requires .+, which is not installed\.$/ { next }
    listing && /^[^ ]+ [^ ]+ requires / { if (heading != "") print heading; heading = ""; print; next }
    { listing = 0; heading = ""; print }
  '
}
pip_install() {
  .venv/bin/python -m pip install -q --disable-pip-version-check "${args[@]}" "$@" 2> >(pip_filter >&2)
}
pip_install torch transformers safetensors tokenizers jinja2 numpy
# --no-deps: lm-eval's full dependency list pulls in packages the mirror lacks; the test needs only these.
# Optional: without it the lm-eval test skips.
if ! .venv/bin/python -c "$LM_EVAL_CHECK" 2>/dev/null; then
  pip_install --no-deps lm-eval \
    && pip_install datasets dill more_itertools sacrebleu scikit-learn tenacity aiohttp requests accelerate \
    || echo "setup-python: lm-eval could not be installed; the lm-eval test will skip" >&2
fi
