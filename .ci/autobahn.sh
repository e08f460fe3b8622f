#!/usr/bin/env bash
# Runs the Autobahn TestSuite against examples/echo (our WebSocket transport)
# and fails when any case's result differs from autobahn/expected-results.json.
set -euo pipefail
cd "$(dirname "$0")/.."

suite=../shared/tools/autobahn/run.sh
[ -x "$suite" ] || { echo "autobahn: $suite not found (../shared must sit beside the project)"; exit 2; }
command -v patch >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq patch; }

cargo build --release --example echo
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/release/examples/echo "127.0.0.1:$port" > /tmp/chatroom-echo.log 2>&1 &
echo_pid=$!
trap 'kill $echo_pid 2>/dev/null || true' EXIT

# Wait for the listener (bounded), instead of a fixed sleep.
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  kill -0 $echo_pid 2>/dev/null || { cat /tmp/chatroom-echo.log; exit 1; }
  sleep 0.1
done

report=$(mktemp -d /tmp/chatroom-autobahn.XXXXXX)
status=0
AUTOBAHN_TIMEOUT=900 "$suite" "ws://127.0.0.1:$port" "$report" || status=$?
if [ ! -f "$report/index.json" ]; then
  echo "autobahn: no report (run.sh exit $status)"
  exit 1
fi
python3 autobahn/compare.py "$report/index.json" autobahn/expected-results.json
