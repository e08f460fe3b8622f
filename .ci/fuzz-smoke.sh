#!/usr/bin/env bash
# Bounded fuzzing runs of every target in fuzz/: each starts from its
# committed seeds (fuzz/seeds/<target>/, copied into the git-ignored corpus)
# with its dictionary, runs FUZZ_SECONDS (default 30), and fails CI on any
# crash, leak (AddressSanitizer's leak check is on by default), timeout
# (-timeout=10 per input) or out-of-memory (-rss_limit_mb=2048). Each
# target's final libFuzzer line (executions, cov, ft, exec/s) is printed, and
# a summary table at the end. Real campaigns run longer, by hand: see
# fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

started=$(date +%s)
cargo +nightly fuzz build
built=$(date +%s)
echo "-- fuzz targets built in $((built - started))s"

dict_for() {
  case "$1" in
    http_request | http_params) echo fuzz/dict/http.dict ;;
    ws_handshake) echo fuzz/dict/ws_handshake.dict ;;
    chat_packets | chat_core | store_replay | message_replay) echo fuzz/dict/json.dict ;;
    resp_decode) echo fuzz/dict/resp.dict ;;
    *) echo "" ;;
  esac
}

log=$(mktemp /tmp/chatroom-fuzz.XXXXXX)
summary=$(mktemp /tmp/chatroom-fuzz-summary.XXXXXX)
trap 'rm -f "$log" "$summary"' EXIT
for target in $(cargo +nightly fuzz list); do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  if [ -d "fuzz/seeds/$target" ]; then
    cp -n fuzz/seeds/"$target"/* "$corpus"/ 2>/dev/null || true
  fi
  args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  dict=$(dict_for "$target")
  if [ -n "$dict" ]; then
    args+=(-dict="$dict")
  fi
  echo "-- fuzz $target for ${seconds}s${dict:+ with $dict}"
  if ! cargo +nightly fuzz run "$target" "$corpus" -- "${args[@]}" >"$log" 2>&1; then
    tail -80 "$log"
    echo "fuzz: $target failed (reproducer under fuzz/artifacts/$target/;" \
      "replay it with: cargo +nightly fuzz run $target <file>)"
    exit 1
  fi
  final=$(grep -E "^#[0-9]+[[:space:]]+DONE" "$log" | tail -1)
  echo "$final"
  grep -E "^Done [0-9]+ runs" "$log" || true
  execs=$(sed -n 's/.*exec\/s: \([0-9]*\).*/\1/p' <<<"$final")
  cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$final")
  ft=$(sed -n 's/.*ft: \([0-9]*\).*/\1/p' <<<"$final")
  units=$(sed -n 's/.*corp: \([0-9]*\)\/.*/\1/p' <<<"$final")
  printf '%-14s %8s %8s %8s %8s\n' "$target" "$execs" "$cov" "$ft" "$units" >>"$summary"
done
echo "-- fuzz summary (${seconds}s per target, $(($(date +%s) - started))s in all)"
printf '%-14s %8s %8s %8s %8s\n' target exec/s cov ft corpus
cat "$summary"
