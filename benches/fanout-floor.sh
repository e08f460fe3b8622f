#!/usr/bin/env bash
# Sender CPU of examples/fanout_floor: one `send` of a 170-byte frame per
# recipient at a fixed rate, nothing else, to a reader that drains the
# sockets with epoll on the other core. The floor under chatroom's
# fixed-rate fan-out scenario (100 msg/s into 1x1000).
#   benches/fanout-floor.sh [CONNS] [RATE] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
conns="${1:-1000}"
rate="${2:-100}"
seconds="${3:-5}"
cargo build -q --release --example fanout_floor
bin="$CARGO_TARGET_DIR/release/examples/fanout_floor"
addr=127.0.0.1:5079
taskset -c 0 "$bin" send "$addr" "$conns" "$rate" "$seconds" &
sender=$!
taskset -c 1 "$bin" read "$addr" "$conns" &
reader=$!
wait $sender
wait $reader
