#!/usr/bin/env python3
"""Medians of benches/cluster.sh runs, one row per configuration, as Markdown.

Per-node columns hold one value per node ("node 0 / node 1"); the median is
taken per node.

usage: cluster.py RESULTS.csv
"""
import csv
import statistics
import sys

KEYS = ["rooms", "members", "senders", "window", "offered_rate", "note"]
FIGURES = [
    ("deliveries_per_s", "deliveries/s", "{:,.0f}"),
    ("msgs_per_s", "msgs/s", "{:,.0f}"),
    ("p50_us", "p50 µs", "{:,.0f}"),
    ("p99_us", "p99 µs", "{:,.0f}"),
    ("server_cpu_pct", "server CPU %", "{:.0f}"),
    ("gen_cpu_pct", "client CPU %", "{:.0f}"),
    ("server_us_per_op", "server ns/delivery", "{:.0f}"),
    ("node_cpu_pct", "node CPU %", "{:.0f}"),
    ("node_ns_per_delivery", "node ns/delivery", "{:.0f}"),
    ("node_us_per_msg", "node µs/msg", "{:.1f}"),
    ("redis_cpu_pct", "Redis CPU %", "{:.1f}"),
    ("redis_us_per_msg", "Redis µs/msg", "{:.1f}"),
    ("lost", "lost", "{:.0f}"),
]


def config(row):
    parts = []
    for key in KEYS:
        if row.get(key):
            parts.append(f"{key}={row[key]}" if key != "note" else row[key])
    if not row.get("note"):
        parts.append("embedded")
    return " ".join(parts)


def cell(rows, column, fmt):
    """The median of a column, per node for "a/b" values."""
    split = [row[column].split("/") for row in rows if row.get(column)]
    if not split:
        return ""
    width = max(len(values) for values in split)
    out = []
    for i in range(width):
        values = [float(v[i]) for v in split if len(v) > i and v[i]]
        if column == "server_us_per_op":
            values = [v * 1e3 for v in values]
        out.append(fmt.format(statistics.median(values)))
    return " / ".join(out)


def main():
    groups = {}
    with open(sys.argv[1], newline="") as f:
        for row in csv.DictReader(f):
            groups.setdefault(config(row), []).append(row)
    print("| configuration | runs | " + " | ".join(t for _, t, _ in FIGURES) + " |")
    print("|---|---:|" + "---:|" * len(FIGURES))
    for name, rows in groups.items():
        cells = [cell(rows, c, fmt) for c, _, fmt in FIGURES]
        print(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
