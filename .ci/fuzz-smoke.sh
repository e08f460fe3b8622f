#!/usr/bin/env bash
# Short fuzzing runs of every target in fuzz/: enough to catch a parser that
# panics on the first odd input; real campaigns run longer, by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

cargo +nightly fuzz build
log=$(mktemp /tmp/chatroom-fuzz.XXXXXX)
for target in $(cargo +nightly fuzz list); do
  echo "-- fuzz $target for ${seconds}s"
  if ! cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" >"$log" 2>&1; then
    tail -60 "$log"
    echo "fuzz: $target failed (reproducer under fuzz/artifacts/$target/)"
    exit 1
  fi
  grep -E "^Done" "$log" || true
done
