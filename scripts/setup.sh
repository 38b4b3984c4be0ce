#!/usr/bin/env bash
# Idempotent set-up of a fresh machine for trainscope development, demo and tests.
#
#   bash scripts/setup.sh            # .venv with trainscope (editable) + dev/test extras, JS bundle
#   bash scripts/setup.sh --browser  # ... and Debian's Chromium for the browser tests (needs apt)
#
# CPU torch is pinned through .ci/constraints.txt (an unpinned torch pulls a multi-GB CUDA build);
# pyproject.toml itself keeps a version range.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
want_browser=0
for a in "$@"; do
  case "$a" in
    --browser) want_browser=1 ;;
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
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$fingerprint" ]; then
  echo "[setup] installing Python packages (torch pinned by .ci/constraints.txt)"
  "$VPY" -m pip install -q --disable-pip-version-check --upgrade pip
  "${PIP[@]}" "torch==2.13.0"
  "${PIP[@]}" -e ".[dev]"
  echo "$fingerprint" > "$stamp"
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
