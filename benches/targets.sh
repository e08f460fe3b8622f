#!/usr/bin/env bash
# The scenarios behind the performance targets, each run RUNS times (3 by
# default), summarised as medians by benches/targets.py.
#   benches/targets.sh                       # this build
#   SERVER_BIN=/path/to/old/chatroom LABEL=before benches/targets.sh
# Run it on a quiet machine: server on CPU 0, load generator and wrk on CPU 1.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
runs="${RUNS:-3}"
label="${LABEL:-now}"
t="${SECONDS_PER_RUN:-5}"
out="benches/results/targets-$label.csv"
mkdir -p benches/results
rm -f "$out"
server=()
[ -n "${SERVER_BIN:-}" ] && server=(--server-bin "$SERVER_BIN")
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null || echo "no wrk: http is skipped" >&2
cargo build --release --bench load || exit 1

failures=0
bench() {
    echo "+ load $*" >&2
    cargo bench -q --bench load -- "$@" "${server[@]}" --seconds "$t" --csv "$out" >/dev/null || {
        echo "!! run failed: $*" >&2
        failures=$((failures + 1))
    }
}

for _ in $(seq "$runs"); do
    bench fresh
    bench fanout --rooms 1 --members 1000 --senders 1 --window 16
    bench fanout --rooms 1 --members 1000 --senders 1 --window 64
    bench fanout --rooms 100 --members 10 --senders 1 --window 16
    bench fanout --rooms 10 --members 100 --senders 10 --window 16
    bench fanout --rooms 1 --members 1000 --senders 1 --rate 100
    bench idle --conns 10000
    bench http
    bench churn
done
bench idle --conns max
bench login
python3 benches/targets.py "$out"
echo "results: $out; failed runs: $failures" >&2
exit $((failures > 0))
