#!/usr/bin/env python3
"""Ingest latency with and without heavy concurrent queries.

Preloads a node with a week of events, then runs the same steady ingest
stream twice on a freshly started node over that data: alone, and with N
threads sending heavy queries back to back. Reports, for each run, the
acknowledgement latency of the stream's batches (p50, p99) and how long the
thread applying the log waited for the state's write lock (the node's own
`ingest.apply_lock_wait_us` from GET /api/v1/storage).

    python3 benches/ingest_under_queries.py --bin target/release/toplog

Only loopback traffic; the node and its data live in a temporary directory.
"""

import argparse
import json
import multiprocessing
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

DAY_MS = 86_400_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, data, port):
    proc = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
         "--max-concurrent-queries", "8", "--auth", "off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc, base
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.1)
    proc.kill()
    sys.exit("node did not become ready")


def stop(proc):
    proc.terminate()
    proc.wait(timeout=120)


def ndjson(rng, n, start_ms, span_ms, tag):
    """`n` events in time order over `[start_ms, start_ms + span_ms)`, as
    traffic arrives (a random order over days is another workload)."""
    lines = []
    for i in range(n):
        lines.append(json.dumps({
            "request_id": f"{tag}-{i}",
            "timestamp": start_ms + span_ms * i // n + rng.randrange(max(1, span_ms // n)),
            "user_id": f"user{rng.randrange(50_000)}",
            "endpoint": f"GET /api/items/{rng.randrange(200)}",
            "status_code": rng.choice([200, 200, 200, 201, 404, 500]),
            "latency_ms": round(rng.expovariate(1 / 80), 3),
        }))
    return ("\n".join(lines) + "\n").encode()


def post(base, body):
    req = urllib.request.Request(base + "/api/v1/requests", data=body,
                                 headers={"Content-Type": "application/x-ndjson"})
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()


def get(base, path, timeout=300):
    with urllib.request.urlopen(base + path, timeout=timeout) as r:
        return json.loads(r.read())


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round((len(values) - 1) * q))]


def query_load(base, paths, threads, done, answered):
    """`threads` threads sending `paths` in turn, back to back, until `done`."""
    def loop(i):
        while not done.is_set():
            try:
                with urllib.request.urlopen(base + paths[(i + answered.value) % len(paths)], timeout=300) as r:
                    r.read()
                with answered.get_lock():
                    answered.value += 1
            except urllib.error.HTTPError as e:
                e.read()

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()


def run(binary, data, seconds, query_threads, batch, every_ms):
    port = free_port()
    proc, base = start(binary, data, port)
    now = int(time.time() * 1000)
    heavy = [
        f"/api/v1/requests/top-k?k=10000&metric=frequency&by=user_id&start={now - 7 * DAY_MS}",
        f"/api/v1/requests/top-k?k=1000&metric=latency_p99&by=endpoint&start={now - 7 * DAY_MS}",
        f"/api/v1/requests/timeseries?metric=latency_p99&interval=1m&by=endpoint&limit=100&start={now - DAY_MS}",
        f"/api/v1/requests/top-k?k=10000&metric=frequency&by=user_id&start={now - DAY_MS}",
    ]
    # The queries come from another process, and their answers are read but
    # not parsed: the stream's timings must not include waiting for this
    # client's interpreter lock.
    done = multiprocessing.Event()
    answered = multiprocessing.Value("i", 0)
    load = multiprocessing.Process(target=query_load, args=(base, heavy, query_threads, done, answered))
    load.start()
    rng = random.Random(7)
    acks = []
    deadline = time.time() + seconds
    n = 0
    while time.time() < deadline:
        body = ndjson(rng, batch, int(time.time() * 1000) - 60_000, 60_000, f"live{n}")
        t0 = time.perf_counter()
        post(base, body)
        acks.append((time.perf_counter() - t0) * 1000)
        n += 1
        time.sleep(every_ms / 1000)
    done.set()
    load.join()
    waits = get(base, "/api/v1/storage")["data"]["ingest"]["apply_lock_wait_us"]
    stop(proc)
    return {
        "batches": len(acks),
        "ack_p50_ms": round(pct(acks, 0.5), 2),
        "ack_p99_ms": round(pct(acks, 0.99), 2),
        "apply_lock_wait_p50_us": round(waits["p50"], 1),
        "apply_lock_wait_p99_us": round(waits["p99"], 1),
        "apply_lock_wait_max_us": round(waits["max"], 1),
        "queries_answered": answered.value,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--events", type=int, default=2_000_000, help="preloaded, over 7 days")
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--queries", type=int, default=8, help="concurrent query threads")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--every-ms", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as data:
        proc, base = start(args.bin, data, free_port())
        rng = random.Random(1)
        now = int(time.time() * 1000)
        batches = max(1, args.events // 20_000)
        span = (7 * DAY_MS - 120_000) // batches
        for b in range(batches):
            post(base, ndjson(rng, args.events // batches, now - 7 * DAY_MS + b * span, span, f"pre{b}"))
        stop(proc)
        idle = run(args.bin, data, args.seconds, 0, args.batch, args.every_ms)
        busy = run(args.bin, data, args.seconds, args.queries, args.batch, args.every_ms)
    print(json.dumps({"idle": idle, f"{args.queries}_heavy_queries": busy}, indent=2))


if __name__ == "__main__":
    main()
