#!/usr/bin/env bash
# The whole load suite, for BENCHMARKS.md: every scenario plus the sweeps the
# charts need. Writes benches/results/latest.csv, then benches/plot.py draws
# benches/charts/*.png. Takes about 10-15 minutes. Run it on a quiet machine:
# the server is pinned to CPU 0 and the load generator (and wrk) to CPU 1.
#   benches/run-all.sh            # everything
#   SECONDS_PER_RUN=2 benches/run-all.sh   # a quick pass
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
out=benches/results/latest.csv
mkdir -p benches/results
rm -f "$out"
t="${SECONDS_PER_RUN:-5}"

if ! command -v wrk >/dev/null; then
    echo "installing wrk for the http scenario" >&2
    apt-get install -y wrk >/dev/null || echo "could not install wrk: the http scenario will be skipped" >&2
fi
cargo build --release --bench load || exit 1

failures=0
bench() {
    echo "+ load $*" >&2
    cargo bench -q --bench load -- "$@" --seconds "$t" --csv "$out" || {
        echo "!! run failed: $*" >&2
        failures=$((failures + 1))
    }
}

bench fresh
bench http
# RSS against held connections.
bench idle --sweep conns=1000,2000,5000,10000,max
# Deliveries/s against room shape, at windows 16 and 64.
for w in 16 64; do
    bench fanout --rooms 1 --senders 1 --window "$w" --sweep members=10,100,1000
    bench fanout --rooms 100 --members 10 --senders 1 --window "$w"
    bench fanout --rooms 10 --members 100 --senders 10 --window "$w"
done
# Latency against offered load into 1x1000, past saturation.
bench fanout --rooms 1 --members 1000 --senders 1 --sweep rate=100,300,1000,2000,3000,4000,5000,6000
bench churn
bench login

python_bin=python3
if ! python3 -c 'import matplotlib' 2>/dev/null; then
    venv=benches/.venv
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -c 'import matplotlib' 2>/dev/null || "$venv/bin/pip" install -q matplotlib
    python_bin="$venv/bin/python"
fi
"$python_bin" benches/plot.py "$out" benches/charts
echo "results: $out; charts: benches/charts/; failed runs: $failures" >&2
exit $((failures > 0))
