#!/usr/bin/env bash
# Server CPU per keep-alive request of examples/http_floor (a responder that
# only counts request heads and writes a fixed answer) beside chatroom's
# GET /chatroom/list on an empty server, measured the same way: the server
# on CPU 0, wrk -t1 on CPU 1, CPU time from /proc/PID/stat over the run.
# What the floor spends is the kernel's share of a request on this machine.
#   benches/http-floor.sh [CONNS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
conns="${1:-64}"
seconds="${2:-5}"
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
cargo build -q --release --bin chatroom --example http_floor
tick=$(getconf CLK_TCK)
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT

measure() { # name port command...
    local name=$1 port=$2
    shift 2
    taskset -c 0 "$@" >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
        sleep 0.05
    done
    local before after out requests
    before=$(awk '{print $14 + $15}' /proc/$pid/stat)
    out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${seconds}s" "http://127.0.0.1:$port/chatroom/list")
    after=$(awk '{print $14 + $15}' /proc/$pid/stat)
    kill $pid
    wait $pid 2>/dev/null || true
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    awk -v n="$name" -v r="$requests" -v s="$seconds" -v c=$((after - before)) -v t="$tick" \
        'BEGIN { printf "%-28s %9.0f req/s  server %5.2f us/request  (%.0f %% of a core)\n", n, r / s, c / t * 1e6 / r, c / t / s * 100 }'
}

measure "floor (examples/http_floor)" 5078 "$CARGO_TARGET_DIR/release/examples/http_floor" 127.0.0.1:5078
measure "chatroom, empty list" 5077 "$CARGO_TARGET_DIR/release/chatroom" --data-dir "$data" --http 127.0.0.1:5077 --ws 127.0.0.1:2377
