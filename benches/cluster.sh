#!/usr/bin/env bash
# Cluster mode (SPEC §9) against the embedded server, for BENCHMARKS.md:
# 1x1000 fan-out with one embedded server, one cluster node and two cluster
# nodes (members split 500/500) on a redis-server of the run's own, runs
# interleaved (embedded, 1 node, 2 nodes, …) so drift hits all alike;
# medians by benches/cluster.py. Needs redis-server (apt-get install
# redis-server); about 15 minutes. Pinning: every node and Redis on CPU 0, the generator on
# CPU 1, except the "node-cpus=0+1" rows (node 1 beside the generator).
#   benches/cluster.sh            # RUNS=3, SECONDS_PER_RUN=5
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
runs="${RUNS:-3}"
t="${SECONDS_PER_RUN:-5}"
out=benches/results/cluster.csv
mkdir -p benches/results
rm -f "$out"
command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }
cargo build --release --bench load || exit 1

failures=0
bench() {
    echo "+ load $*" >&2
    cargo bench -q --bench load -- "$@" --seconds "$t" --csv "$out" >/dev/null || {
        echo "!! run failed: $*" >&2
        failures=$((failures + 1))
    }
}
shapes=(
    "--window 16"                      # throughput, one sender
    "--senders 16 --window 1"          # throughput, 16 senders of one message each
    "--rate 100"                       # latency at a fixed rate
    "--rate 10"                        # latency at a low rate
    "--members 10 --rate 100"          # the Redis hop, with almost no burst
)
for _ in $(seq "$runs"); do
    for shape in "${shapes[@]}"; do
        # shellcheck disable=SC2086
        {
            bench fanout $shape
            bench fanout $shape --redis --nodes 1
            bench fanout $shape --redis --nodes 2
        }
    done
    # Many small rooms, every member sending: Redis's share of the work.
    bench fanout --rooms 10 --members 10 --senders 10 --window 16 --redis --nodes 1
    bench fanout --rooms 10 --members 10 --senders 10 --window 16 --redis --nodes 2
    # Two nodes on two cores (node 1 shares CPU 1 with the generator).
    bench fanout --rate 100 --redis --nodes 2 --node-cpus 0,1 --redis-cpu 0
    bench fanout --senders 16 --window 1 --redis --nodes 2 --node-cpus 0,1 --redis-cpu 0
done
python3 benches/cluster.py "$out"
exit $((failures > 0))
