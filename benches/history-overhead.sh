#!/usr/bin/env bash
# What history costs the hot path: the fan-out targets with history at its
# defaults against --history-size 0, runs interleaved (on, off, on, off, …)
# so drift on a noisy machine hits both alike; medians by targets.py.
#   benches/history-overhead.sh            # RUNS=5 by default
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
runs="${RUNS:-5}"
t="${SECONDS_PER_RUN:-5}"
mkdir -p benches/results
on=benches/results/history-on.csv
off=benches/results/history-off.csv
rm -f "$on" "$off"
cargo build --release --bench load || exit 1
failures=0
bench() {
    local out="$1"; shift
    echo "+ load $*" >&2
    cargo bench -q --bench load -- "$@" --seconds "$t" --csv "$out" >/dev/null || {
        echo "!! run failed: $*" >&2
        failures=$((failures + 1))
    }
}
for _ in $(seq "$runs"); do
    for mode in on off; do
        if [ "$mode" = on ]; then out="$on"; extra=(); else out="$off"; extra=(--server-arg=--history-size=0); fi
        bench "$out" fanout --rooms 1 --members 1000 --senders 1 --window 16 "${extra[@]}"
        bench "$out" fanout --rooms 1 --members 1000 --senders 1 --rate 100 "${extra[@]}"
        bench "$out" idle --conns 10000 "${extra[@]}"
    done
done
echo "== history on (defaults)"; python3 benches/targets.py "$on"
echo "== history off (--history-size 0)"; python3 benches/targets.py "$off"
exit $((failures > 0))
