#!/usr/bin/env python3
"""Start-up time and memory of retained history.

Writes a data directory with ROOMS rooms of MESSAGES retained messages each
(default 10,000 x 1,000, the issue's figure) in the message log's own format
and segment size, then starts the release server on it RUNS times and
reports, per run, the time from exec to the first /healthz answer and the
server's RSS then, beside the RSS of the same rooms with no messages.

    python3 benches/history_startup.py [--rooms N] [--messages N] [--runs N]
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

SEGMENT_BYTES = 8 << 20


def write_data(path, rooms, messages, text):
    os.makedirs(os.path.join(path, "messages"))
    with open(os.path.join(path, "rooms.jsonl"), "w") as f:
        for r in range(rooms):
            f.write(json.dumps({"name": f"room-{r}", "capacity": 100, "created_ms": 0},
                               separators=(",", ":")) + "\n")
    open(os.path.join(path, "users.jsonl"), "w").close()
    if messages == 0:
        return 0
    segment, size, total = 1, 0, 0
    out = open(os.path.join(path, "messages", f"{segment:08}.jsonl"), "w")
    # Interleaved as a busy server writes them: seq by seq across rooms.
    for seq in range(1, messages + 1):
        lines = []
        for r in range(rooms):
            lines.append(json.dumps({"room": f"room-{r}", "seq": seq, "ts": 1795500000000 + seq,
                                     "user": f"user-{(seq + r) % 500}", "avatar": "",
                                     "msg": text}, separators=(",", ":")) + "\n")
        chunk = "".join(lines)
        out.write(chunk)
        size += len(chunk.encode())
        total += len(chunk.encode())
        if size >= SEGMENT_BYTES:
            out.close()
            segment += 1
            size = 0
            out = open(os.path.join(path, "messages", f"{segment:08}.jsonl"), "w")
    out.close()
    return total


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_and_measure(binary, data_dir):
    http, ws = free_port(), free_port()
    started = time.monotonic()
    proc = subprocess.Popen([binary, "--http", f"127.0.0.1:{http}", "--ws", f"127.0.0.1:{ws}",
                             "--data-dir", data_dir], stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    sys.exit(f"server exited with {proc.returncode}")
                time.sleep(0.01)
        elapsed = time.monotonic() - started
        with open(f"/proc/{proc.pid}/status") as f:
            rss_kib = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics") as r:
            metrics = r.read().decode()
        retained = next(int(l.split()[1]) for l in metrics.splitlines()
                        if l.startswith("chatroom_history_messages_retained "))
        return elapsed, rss_kib, retained
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rooms", type=int, default=10_000)
    ap.add_argument("--messages", type=int, default=1_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--text-chars", type=int, default=60)
    ap.add_argument("--bin", default="target/release/chatroom")
    args = ap.parse_args()
    text = ("chat message text " * 10)[: args.text_chars]
    base = tempfile.mkdtemp(prefix="history-startup-")
    try:
        results = {}
        for label, messages in [("rooms only", 0), ("with history", args.messages)]:
            path = os.path.join(base, label.replace(" ", "-"))
            t0 = time.monotonic()
            disk = write_data(path, args.rooms, messages, text)
            print(f"{label}: wrote {disk / 1e6:.0f} MB of messages in {time.monotonic() - t0:.0f} s",
                  file=sys.stderr)
            runs = [start_and_measure(args.bin, path) for _ in range(args.runs)]
            results[label] = runs
            shutil.rmtree(path)
        print(f"| data | start-up (median of {args.runs}) | RSS at start | messages retained |")
        print("|---|---:|---:|---:|")
        for label, runs in results.items():
            t = statistics.median(r[0] for r in runs)
            rss = statistics.median(r[1] for r in runs)
            print(f"| {args.rooms} rooms, {label} | {t:.2f} s | {rss / 1024:.0f} MiB | {runs[0][2]} |")
        base_rss = statistics.median(r[1] for r in results["rooms only"])
        full = results["with history"]
        rss = statistics.median(r[1] for r in full)
        retained = full[0][2]
        if retained:
            print(f"\nretained messages cost {(rss - base_rss) * 1024 / retained:.0f} bytes each "
                  f"({args.text_chars}-character texts)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
