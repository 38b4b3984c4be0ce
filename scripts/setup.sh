#!/usr/bin/env bash
# Idempotent set-up of a fresh machine for trainscope development, demo and tests.
#
#   bash scripts/setup.sh            # .venv with trainscope (editable) + dev/test extras, JS bundle
#   bash scripts/setup.sh --demo     # .venv with the runtime + JupyterLab + scikit-learn only (the demo)
#   bash scripts/setup.sh --browser  # ... and Debian's Chromium for the browser tests (needs apt)
#
# The distribution is named jupyter-trainscope ("trainscope" on the package index is another project);
# the import name is trainscope.
# CPU torch is pinned through .ci/constraints.txt (an unpinned torch pulls a multi-GB CUDA build);
# pyproject.toml itself keeps a version range.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
want_browser=0
extra=dev
for a in "$@"; do
  case "$a" in
    --browser) want_browser=1 ;;
    --demo) extra=demo ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
PIP=("$VPY" -m pip install -q --disable-pip-version-check -c "$ROOT/.ci/constraints.txt")
stamp=.venv/.trainscope-setup
fingerprint=$(cat pyproject.toml .ci/constraints.txt | sha1sum | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)
# the dev extras include everything the demo needs: a .venv set up for tests serves the demo as is
if [ "$have" != "$fingerprint dev" ] && [ "$have" != "$fingerprint $extra" ]; then
  echo "[setup] installing Python packages: jupyter-trainscope[$extra] (torch pinned by .ci/constraints.txt)"
  "$VPY" -m pip install -q --disable-pip-version-check --upgrade pip
  "${PIP[@]}" "torch==2.13.0"
  # a checkout from before the rename installed this project as "trainscope": remove that record
  # (this is the project's own .venv, so a "trainscope" here is ours, not the other project)
  if "$VPY" -m pip show -q trainscope >/dev/null 2>&1; then
    "$VPY" -m pip uninstall -y -q trainscope
  fi
  "${PIP[@]}" -e ".[$extra]"
  echo "$fingerprint $extra" > "$stamp"
fi

if [ -f package.json ]; then
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "[setup] installing JS build tools (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
  fi
  echo "[setup] bundling the frontend (esbuild)"
  npm run --silent build
fi

if [ "$want_browser" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  echo "[setup] installing Debian's Chromium for the browser tests"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
echo "[setup] ready: $("$VPY" -c 'import torch, trainscope; print("torch", torch.__version__, "| trainscope", trainscope.__version__)')"
