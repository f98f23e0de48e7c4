#!/usr/bin/env python3
"""Two toplog builds side by side on the comparison workload, interleaved:
memory, disk and first-run latency, the rows issue 23 measures structure by.

    python3 benches/memory_ab.py --before OLD/toplog --after NEW/toplog \
        --loadgen target/release/loadgen [--events 10000000] [--rounds 2]

Each run: a fresh node (defaults: fsync always, auth off on loopback) is sent
the events by `loadgen send` (NDJSON, 30 days, 4 connections), which then runs
the query mix 10 times; the node's peak RSS (VmHWM), CPU seconds and data
directory size are read; then it is restarted on the same directory and the
query mix runs once (each query's first run after a restart) and 10 times.
The runs alternate before/after, so the machine's drift hits both alike.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import cpu_seconds, dir_parts, free_port, wait_ready  # noqa: E402


def start(binary, data, port):
    """A node on `data` (auth off, loopback), once ready; and how long that took."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data, "--auth", "off"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_ready(f"http://127.0.0.1:{port}", proc)
    return proc, time.monotonic() - t0


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    out["cpu_s"] = cpu_seconds(pid)
    return out


QUERY_ROW = re.compile(r"^\| (.+?) \| ([\d.]+) ms \| ([\d.]+) ms \|")


def queries(output):
    """Per query of the mix, (p50, p99) over HTTP in ms, from loadgen's table."""
    out = {}
    for line in output.splitlines():
        m = QUERY_ROW.match(line)
        if m:
            out[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    return out


def run(binary, loadgen, events):
    data = tempfile.mkdtemp(prefix="toplog-ab-", dir="/var/tmp")
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    result = {}
    try:
        proc, _ = start(binary, data, port)
        sent = subprocess.run(
            [loadgen, "send", "--server", server, "--events", str(events), "--days", "30",
             "--repeat", "10", "--server-pid", str(proc.pid)],
            check=True, capture_output=True, text=True,
        ).stdout
        m = re.search(r"= (\d+) events/s", sent)
        result["ingest_events_s"] = int(m.group(1))
        m = re.search(r"freshness \(\d+ probes\): p50 ([\d.]+) ms, p99 ([\d.]+) ms", sent)
        result["freshness_p99_ms"] = float(m.group(2))
        st = status(proc.pid)
        result["peak_rss_mib"] = round(st["VmHWM"])
        result["server_cpu_us_per_event"] = round(st["cpu_s"] / events * 1e6, 2)
        result["warm"] = queries(sent)
        sizes = dir_parts(data)
        result["data_dir_bytes_per_event"] = round(sum(sizes.values()) / events, 1)
        result["by_part"] = {k: round(v / events, 1) for k, v in sizes.items() if v > events / 10}
        proc.terminate()
        proc.wait()
        proc, took = start(binary, data, port)
        result["restart_s"] = round(took, 2)
        result["rss_after_restart_mib"] = round(status(proc.pid)["VmRSS"])
        first = subprocess.run(
            [loadgen, "query", "--server", server, "--repeat", "1"],
            check=True, capture_output=True, text=True,
        ).stdout
        result["first_after_restart"] = {k: v[0] for k, v in queries(first).items()}
        result["rss_after_queries_mib"] = round(status(proc.pid)["VmRSS"])
        proc.terminate()
        proc.wait()
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    for r in range(args.rounds):
        for name, binary in (("before", args.before), ("after", args.after)):
            res = run(binary, args.loadgen, args.events)
            print(json.dumps({"round": r + 1, "build": name, **res}), flush=True)


if __name__ == "__main__":
    main()
