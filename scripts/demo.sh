#!/usr/bin/env bash
# The README's demo: JupyterLab on examples/quickstart.ipynb, served on 127.0.0.1 only.
#
#   bash scripts/demo.sh                 # sets up what is missing (scripts/setup.sh), then starts JupyterLab
#   bash scripts/demo.sh --port 8890     # extra arguments go to `jupyter lab`
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
extra=()
if [ "$(id -u)" = 0 ]; then extra+=(--allow-root); fi  # containers often run as root
echo "demo: starting JupyterLab on http://127.0.0.1 (Ctrl-C to stop)"
exec .venv/bin/jupyter lab examples/quickstart.ipynb --ServerApp.ip=127.0.0.1 "${extra[@]}" "$@"
