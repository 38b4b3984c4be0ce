#!/usr/bin/env bash
# Prepare the extra ipykernel lines the delivery tests run against (tests/test_delivery_kernels.py).
#
#   bash scripts/kernels.sh            # creates .venvs/ik-6.31.0, ik-7.0.1 and ik-7.3.0 (idempotent)
#   IK_VERSIONS="7.0.1" bash scripts/kernels.sh
#
# Each kernel venv holds only ipykernel and its own dependencies.  torch, numpy, ipywidgets,
# anywidget, bqplot, jupyter-ui-poll and trainscope itself come from the main venv (.venv) through a
# .pth file, which Python appends to sys.path AFTER the venv's own site-packages: the kernel's
# ipykernel / IPython / comm win, everything else is shared.  This costs a few MB per line instead
# of three more copies of torch.  The main venv's ipykernel (>= 7.4) is the third line.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MAIN_PY=${MAIN_PY:-$ROOT/.venv/bin/python}
VERSIONS=${IK_VERSIONS:-"6.31.0 7.0.1 7.3.0"}

if [ ! -x "$MAIN_PY" ]; then
  echo "kernels.sh: $MAIN_PY not found; create the main venv first (scripts/demo.sh or pip install -e .[dev])" >&2
  exit 1
fi
MAIN_SITE=$("$MAIN_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
BASE_PY=$("$MAIN_PY" -c 'import sys; print(sys._base_executable)')

for v in $VERSIONS; do
  venv="$ROOT/.venvs/ik-$v"
  if [ -x "$venv/bin/python" ] && (cd / && "$venv/bin/python" -c "import ipykernel, sys, trainscope; sys.exit(ipykernel.__version__ != '$v')" 2>/dev/null); then
    echo "ipykernel $v: $venv (ready)"
    continue
  fi
  rm -rf "$venv"
  "$BASE_PY" -m venv "$venv"
  # ipykernel only (+ its dependencies); never torch here
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$ROOT/.ci/constraints.txt" "ipykernel==$v"
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # "import" lines in a .pth run at start-up: addsitedir appends the main venv (after this venv's
  # own packages) and also processes its .pth files, so an editable trainscope is found too
  echo "import site; site.addsitedir('$MAIN_SITE')" > "$site/zz_trainscope_main_venv.pth"
  (cd / && "$venv/bin/python" -c "import ipykernel, IPython, torch, ipywidgets, anywidget, bqplot, trainscope; print('ipykernel', ipykernel.__version__, 'IPython', IPython.__version__, 'torch', torch.__version__)")
  echo "ipykernel $v: $venv"
done
