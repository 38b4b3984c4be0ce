#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, lint, type checks, JS tests, pytest.
#
#   bash scripts/test.sh              # everything (what CI runs)
#   bash scripts/test.sh -k probe     # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser
if [ -f scripts/kernels.sh ]; then
  bash scripts/kernels.sh  # extra ipykernel lines for the click-delivery tests
fi
PY=.venv/bin/python
echo "[test] ruff"
.venv/bin/ruff check trainscope tests benchmarks examples
echo "[test] mypy (core strict)"
.venv/bin/mypy
if [ -f package.json ]; then
  echo "[test] JS: typecheck + unit tests"
  npm run --silent typecheck
  npm test --silent
fi
echo "[test] pytest"
"$PY" -m pytest "$@"
