#!/usr/bin/env python3
"""Measures tiering: how fast a maintenance pass moves raw segments to the
archive (Parquet, written, read back and compared row by row), and what raw
queries cost before and after, when they read local segments and then the
archive (the default folder archive: the store's own speed is not measured).

    python3 benches/tiering.py --events 2000000 --days 10

Builds release binaries, loads the events over HTTP with `loadgen send`,
times the queries, runs one maintenance pass with raw.local_for = 1d, times
the queries again, and checks every answer is the same.
"""

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import binary, build, dir_bytes, log, start_toplog, wait_child  # noqa: E402


def get(base, path, method="GET"):
    req = urllib.request.Request(base + path, method=method)
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def timed(base, path, repeat):
    """(median, first) wall time in ms over `repeat` runs, and the (identical) answer.
    The first run of a raw query decodes what the cache does not hold yet."""
    times, answer = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        body = get(base, path)
        times.append((time.perf_counter() - t) * 1000)
        data = body.get("data", body.get("count"))
        if answer is not None and data != answer:
            raise SystemExit(f"{path}: answers differ between runs")
        answer = data
    return (statistics.median(times), times[0]), answer


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=2_000_000)
    p.add_argument("--days", type=float, default=10)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--workdir", default="/var/tmp/toplog-tiering")
    p.add_argument("--no-build", action="store_true")
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if not args.no_build:
        build()
    server, base, data = start_toplog(
        work, "--maintenance-interval", "0s", "--memtable-max-age", "2s", "--raw-local-for", "1d"
    )
    now = int(time.time())
    log(f"loading {args.events} events over {args.days} days")
    subprocess.run(
        [binary("loadgen"), "send", "--events", str(args.events), "--days", str(args.days),
         "--server", base, "--repeat", "1", "--probes", "0", "--end", str(now - 60), "--now", str(now)],
        check=True, stdout=subprocess.DEVNULL,
    )
    while get(base, "/api/v1/storage")["data"]["memtable"]["rows"] != 0:
        time.sleep(0.5)
    start = (now - int(args.days * 86400) - 3600) * 1000
    top = get(base, f"/api/v1/requests/top-k?k=1&metric=frequency&by=endpoint&start={start}")["data"][0]["request_id"]
    queries = {
        "slowest 10 requests, whole span (raw)":
            f"/api/v1/requests/top-k?k=10&metric=latency_max&by=request&start={start}&end={now * 1000}",
        "5xx count of the top endpoint, whole span (raw scan)":
            f"/api/v1/requests/count?start={start}&end={now * 1000}&status_code=500&endpoint={urllib.parse.quote(top)}",
        "slowest 10 requests, one day 5 days ago (raw, pruned)":
            f"/api/v1/requests/top-k?k=10&metric=latency_max&by=request&start={(now - 5 * 86400) * 1000}&end={(now - 4 * 86400) * 1000}",
        "top-10 endpoints, whole span (rollups)":
            f"/api/v1/requests/top-k?k=10&metric=frequency&by=endpoint&start={start}&end={now * 1000}",
    }
    before = {name: timed(base, q, args.repeat) for name, q in queries.items()}
    local_bytes = dir_bytes(data / "segments")
    log("maintenance pass: tiering segments older than 1 day")
    t = time.perf_counter()
    report = get(base, "/api/v1/admin/maintenance", method="POST")["data"]
    wall = time.perf_counter() - t
    if report["errors"]:
        raise SystemExit(f"maintenance errors: {report['errors']}")
    rows = sum(a["rows"] for a in report["archived"])
    parquet = sum(a["bytes"] for a in report["archived"])
    after = {name: timed(base, q, args.repeat) for name, q in queries.items()}
    storage = get(base, "/api/v1/storage")["data"]["tiers"]
    server.send_signal(signal.SIGTERM)
    code, peak = wait_child(server)
    if code != 0:
        raise SystemExit(f"toplog exited with {code}")
    for name in queries:
        if before[name][1] != after[name][1]:
            raise SystemExit(f"{name}: the answer changed after tiering")
    out = {
        "events": args.events, "days": args.days,
        "archived_segments": len(report["archived"]), "archived_rows": rows,
        "compacted": len(report["compacted"]),
        "pass_s": wall, "rows_per_s": rows / wall if wall else None,
        "local_segment_bytes_before": local_bytes, "parquet_bytes": parquet,
        "tiers": storage, "peak_rss_mib": peak,
        "queries_ms": {n: {"local": before[n][0], "archived": after[n][0]} for n in queries},
        "note": "each pair is (median, first run)",
    }
    (work / "tiering.json").write_text(json.dumps(out, indent=2))
    print(f"\n{rows:,} rows in {len(report['archived'])} segments archived in {wall:.2f} s "
          f"({rows / wall:,.0f} rows/s; {len(report['compacted'])} compactions in the same pass)")
    print(f"segments {local_bytes / max(1, args.events):.1f} B/event on disk; "
          f"Parquet {parquet / max(1, rows):.1f} B/row in the archive")
    print(f"peak RSS of the node: {peak:,.0f} MiB")
    print("\n| query (over HTTP) | local, first run | local, median of %d | archived, first run | archived, median |" % args.repeat)
    print("|---|---|---|---|---|")
    for n in queries:
        (a, a1), (b, b1) = before[n][0], after[n][0]
        print(f"| {n} | {a1:.1f} ms | {a:.1f} ms | {b1:.1f} ms | {b:.1f} ms |")
    print("\nEvery answer is the same before and after tiering.")


if __name__ == "__main__":
    main()
