#!/usr/bin/env python3
"""Draws the BENCHMARKS.md charts from the CSV the load generator appends to.

usage: plot.py RESULTS.csv CHART_DIR
"""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def num(row, key):
    try:
        return float(row.get(key) or "nan")
    except ValueError:
        return float("nan")


def rss_vs_connections(rows, out):
    idle = sorted((r for r in rows if r["scenario"] == "idle"), key=lambda r: num(r, "conns"))
    if not idle:
        return
    conns = [num(r, "conns") for r in idle]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(conns, [num(r, "server_rss_kib") / 1024 for r in idle], "o-", label="server RSS (MiB)")
    ax.set_xlabel("joined WebSocket connections held")
    ax.set_ylabel("server RSS (MiB)")
    ax2 = ax.twinx()
    ax2.plot(conns, [num(r, "bytes_per_conn") for r in idle], "s--", color="tab:orange", label="bytes per connection")
    ax2.set_ylabel("RSS growth per connection (bytes)")
    ax2.set_ylim(bottom=0)
    ax.set_title("Idle memory: RSS against held connections")
    fig.legend(loc="upper left", bbox_to_anchor=(0.12, 0.88))
    fig.tight_layout()
    fig.savefig(os.path.join(out, "rss_vs_connections.png"), dpi=120)
    plt.close(fig)


def deliveries_vs_room(rows, out):
    fan = [r for r in rows if r["scenario"] == "fanout"]
    if not fan:
        return
    shapes = []
    for r in fan:
        shape = "%d×%d×%d" % (num(r, "rooms"), num(r, "members"), num(r, "senders"))
        if shape not in shapes:
            shapes.append(shape)
    windows = sorted({int(num(r, "window")) for r in fan})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(len(windows), 1)
    for i, w in enumerate(windows):
        xs, ys, labels = [], [], []
        for j, shape in enumerate(shapes):
            match = [r for r in fan if int(num(r, "window")) == w
                     and "%d×%d×%d" % (num(r, "rooms"), num(r, "members"), num(r, "senders")) == shape]
            if match:
                r = match[-1]
                xs.append(j + i * width)
                ys.append(num(r, "deliveries_per_s") / 1e6)
                labels.append("srv %.0f%%\ngen %.0f%%" % (num(r, "server_cpu_pct"), num(r, "gen_cpu_pct")))
        bars = ax.bar(xs, ys, width, label="window %d" % w)
        for bar, label in zip(bars, labels):
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks([j + width * (len(windows) - 1) / 2 for j in range(len(shapes))])
    ax.set_xticklabels(shapes)
    ax.set_xlabel("rooms × members × senders per room")
    ax.set_ylabel("deliveries/s (millions)")
    ax.set_title("Fan-out throughput against room shape (CPU % of one core)")
    ax.legend()
    ax.margins(y=0.2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "deliveries_vs_room.png"), dpi=120)
    plt.close(fig)


def latency_vs_load(rows, out):
    fixed = sorted((r for r in rows if r["scenario"] == "fanout-rate"), key=lambda r: num(r, "offered_rate"))
    if not fixed:
        return
    offered = [num(r, "offered_rate") * num(r, "members") / 1e6 for r in fixed]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9"), ("max_us", "max")):
        ax.plot(offered, [num(r, key) / 1e3 for r in fixed], "o-", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("offered deliveries/s (millions; messages/s × members)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax2 = ax.twinx()
    ax2.plot(offered, [num(r, "server_cpu_pct") for r in fixed], "k:", label="server CPU %")
    ax2.plot(offered, [num(r, "gen_cpu_pct") for r in fixed], ":", color="grey", label="generator CPU %")
    ax2.set_ylabel("CPU (% of one core)")
    ax2.set_ylim(0, 110)
    members = int(num(fixed[0], "members"))
    ax.set_title("Latency against offered load, 1 room × %d members" % members)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "latency_vs_load.png"), dpi=120)
    plt.close(fig)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1], newline="") as f:
        rows = list(csv.DictReader(f))
    os.makedirs(sys.argv[2], exist_ok=True)
    rss_vs_connections(rows, sys.argv[2])
    deliveries_vs_room(rows, sys.argv[2])
    latency_vs_load(rows, sys.argv[2])
    print("charts written to", sys.argv[2])


if __name__ == "__main__":
    main()
