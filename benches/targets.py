#!/usr/bin/env python3
"""Medians of repeated load runs, one row per configuration, as Markdown.

usage: targets.py RESULTS.csv [MORE.csv ...]   (one column group per file)
"""
import csv
import statistics
import sys

KEYS = ["scenario", "rooms", "members", "senders", "window", "offered_rate", "conns", "note"]
FIGURES = [
    ("deliveries_per_s", "deliveries/s", "{:,.0f}"),
    ("ops_per_s", "ops/s", "{:,.0f}"),
    ("p50_us", "p50 µs", "{:,.0f}"),
    ("p99_us", "p99 µs", "{:,.0f}"),
    ("server_cpu_pct", "server CPU %", "{:.0f}"),
    ("gen_cpu_pct", "client CPU %", "{:.0f}"),
    ("server_us_per_op", "server µs/op", "{:.2f}"),
    ("bytes_per_conn", "B/conn", "{:,.0f}"),
    ("server_rss_kib", "RSS KiB", "{:,.0f}"),
    ("lost", "lost", "{:.0f}"),
]


def config(row):
    parts = [row["scenario"]]
    for key in KEYS[1:]:
        if row.get(key):
            parts.append(f"{key}={row[key]}")
    return " ".join(parts)


def medians(path):
    groups = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            groups.setdefault(config(row), []).append(row)
    table = {}
    for name, rows in groups.items():
        cells = {}
        for column, _, fmt in FIGURES:
            values = []
            for row in rows:
                try:
                    values.append(float(row[column]))
                except (KeyError, ValueError):
                    pass
            if values:
                cells[column] = (fmt.format(statistics.median(values)), len(values))
        table[name] = cells
    return table


def main():
    for path in sys.argv[1:]:
        table = medians(path)
        used = [f for f in FIGURES if any(f[0] in cells for cells in table.values())]
        print(f"\n{path} (medians; runs per row in brackets)\n")
        print("| configuration | " + " | ".join(title for _, title, _ in used) + " |")
        print("|---|" + "---:|" * len(used))
        for name, cells in table.items():
            row = []
            for column, _, _ in used:
                value, n = cells.get(column, ("", 0))
                row.append(f"{value} ({n})" if value and n > 1 and column == used[0][0] else value)
            print(f"| {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
