#!/usr/bin/env bash
# The README's live demo: JupyterLab on examples/demo.ipynb (a training that is visibly broken, the
# finding that names why, one click that fixes it), served on 127.0.0.1 only.
#
#   bash scripts/demo.sh                      # sets up what is missing, starts JupyterLab, prints its URL
#   bash scripts/demo.sh --port 8890 --no-browser   # extra arguments go to `jupyter lab`
#
# Installs the runtime, JupyterLab and scikit-learn only (scripts/setup.sh --demo), not the
# development toolchain; a .venv already set up for the tests is used as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo
PY=.venv/bin/python
NOTEBOOK=examples/demo.ipynb

port=""
token=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --port | --ServerApp.port) port=${args[$((i + 1))]:-} ;;
    --port=* | --ServerApp.port=*) port=${args[$i]#*=} ;;
    --IdentityProvider.token=* | --ServerApp.token=*) token=${args[$i]#*=} ;;
  esac
done
extra=()
if [ -z "$port" ]; then  # the first free port from 8888 on
  port=$("$PY" -c '
import socket
for p in range(8888, 8988):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
        print(p)
        break
')
  extra+=(--port="$port")
fi
if [ -z "$token" ]; then
  token=$("$PY" -c 'import secrets; print(secrets.token_hex(16))')
  extra+=(--IdentityProvider.token="$token")
fi
if [ "$(id -u)" = 0 ]; then extra+=(--allow-root); fi  # containers often run as root
url="http://127.0.0.1:$port/lab/tree/$NOTEBOOK?token=$token"

echo "demo: starting JupyterLab on 127.0.0.1:$port (Ctrl-C to stop)"
.venv/bin/jupyter lab "$NOTEBOOK" --ServerApp.ip=127.0.0.1 "${extra[@]}" "$@" &
server=$!
# a command put in the background by a script ignores SIGINT (bash), so Ctrl-C reaches JupyterLab as SIGTERM
trap 'kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; exit 130' INT TERM
for _ in $(seq 1 240); do  # up to 2 minutes
  if ! kill -0 "$server" 2>/dev/null; then
    wait "$server"
    exit $?
  fi
  if "$PY" -c "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 0.5)" "$port" 2>/dev/null; then
    break
  fi
  sleep 0.5
done
cat <<BANNER

  ==========================================================================================
   trainscope demo is running. Open this URL in your browser (it includes the login token):

     $url

   Then: Run > Run All Cells. While it trains, click the finding's "Re-initialize" button.
   Ctrl-C here stops JupyterLab.
  ==========================================================================================

BANNER
wait "$server"
