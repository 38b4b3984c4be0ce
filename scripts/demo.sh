#!/usr/bin/env bash
# The README's demo: JupyterLab on examples/quickstart.ipynb, served on 127.0.0.1 only.
#
#   bash scripts/demo.sh                 # sets up what is missing, then starts JupyterLab
#   bash scripts/demo.sh --port 8890     # extra arguments go to `jupyter lab`
#
# Idempotent: the venv (.venv) is installed with `pip install -c .ci/constraints.txt -e ".[dev]"`
# only when pyproject.toml or the constraints changed since the last run, node_modules with
# `npm ci` only when package-lock.json changed; the frontend bundle is rebuilt every time (~1 s).
# The constraints pin torch to the CPU build used here: an unpinned torch pulls a multi-GB CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "demo: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.trainscope-install
want=$(cat pyproject.toml .ci/constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "demo: installing trainscope (editable) with its dev extras"
  .venv/bin/python -m pip install -q --disable-pip-version-check -c .ci/constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
fi

if ! command -v npm >/dev/null; then
  echo "demo: npm (Node >= 20) is needed to build the dashboard's frontend" >&2
  exit 1
fi
lock=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat node_modules/.trainscope-install 2>/dev/null)" != "$lock" ]; then
  echo "demo: installing the frontend build tools (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock" > node_modules/.trainscope-install
fi
npm run --silent build

extra=()
if [ "$(id -u)" = 0 ]; then extra+=(--allow-root); fi  # containers often run as root
echo "demo: starting JupyterLab on http://127.0.0.1 (Ctrl-C to stop)"
exec .venv/bin/jupyter lab examples/quickstart.ipynb --ServerApp.ip=127.0.0.1 "${extra[@]}" "$@"
