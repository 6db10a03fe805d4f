#!/usr/bin/env bash
# One-time (and idempotent) setup of a fresh machine: system packages for software
# WebGPU and the browser tests, pnpm and the workspace's dependencies, and the Python
# venv with Transformers that the reference tests compare against.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-system.sh

want_pnpm=$(node -p "require('./package.json').packageManager.split('@')[1]")
if ! command -v pnpm >/dev/null 2>&1 || [ "$(pnpm --version 2>/dev/null)" != "$want_pnpm" ]; then
  npm install -g "pnpm@$want_pnpm" >/dev/null
fi
pnpm install --frozen-lockfile --reporter=silent

if [ -f scripts/setup-python.sh ] && [ "${SKIP_PYTHON:-0}" != 1 ]; then
  bash scripts/setup-python.sh || echo "setup: the Python reference venv could not be made; reference tests will skip" >&2
fi
