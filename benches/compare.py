#!/usr/bin/env python3
"""toplog side by side with DuckDB and ClickHouse (chDB), on one machine in one go.

    python3 benches/compare.py --events 10000000 --days 30

1. Builds the release `toplog` and `loadgen`, and installs `duckdb` and `chdb`
   with pip if they are missing.
2. `loadgen generate` writes the workload once as NDJSON and once as Parquet,
   ending at a fixed instant.
3. toplog: a fresh node (fsync always, auth on with an admin key, encryption
   off) is sent the same events over HTTP by `loadgen send`, which then runs
   the query mix with ranges ending at a fixed instant and writes every answer
   to a report. The node is restarted on its data and each query run once
   (the first run after a restart). Then the same events go over gRPC to a
   fresh node (loadgen pinned to CPU 1 with taskset), and over HTTP to the
   leader of a fresh 3-node cluster on this machine; the server's CPU
   seconds are read after each load.
4. Each peer runs in its own process (so its peak memory is its own) and loads
   the same NDJSON file: DuckDB into a database file; ClickHouse into a
   MergeTree table partitioned by day and ordered by (hour, endpoint,
   timestamp); ClickHouse again with a 1-minute AggregatingMergeTree rollup by
   endpoint kept by a materialized view. Each runs the equivalent SQL of every
   query `--repeat` times.
5. Every answer is checked against DuckDB's exact answer, and two tables are
   printed: ingest rate, bytes per event on disk, peak memory and the median
   latency of each query, with toplog's ratio to the best peer; then toplog's
   own rows (gRPC and cluster ingest, CPU per event, the whole data directory,
   first runs after a restart, freshness).

Latencies of the peers are measured in process (no network); toplog's are over
HTTP as the client sees them (and, in brackets, inside the server).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ["duckdb", "clickhouse", "clickhouse-mv"]
PEER_NAMES = {
    "duckdb": "DuckDB",
    "clickhouse": "ClickHouse",
    "clickhouse-mv": "ClickHouse + 1m MV",
}


def log(msg):
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_packages():
    missing = []
    for module in ("duckdb", "chdb"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        log(f"installing {' '.join(missing)}")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *missing],
            check=True,
        )


def target_dir():
    return Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/toplog-target"))


def build():
    log("building release toplog and loadgen")
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir()))
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "-p", "toplog-server", "-p", "toplog-benches", "--bins"],
        cwd=ROOT,
        env=env,
        check=True,
    )


def binary(name):
    return str(target_dir() / "release" / name)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dir_bytes(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def dir_parts(path):
    """Bytes of each entry of a data directory."""
    return {p.name: dir_bytes(p) if p.is_dir() else p.stat().st_size for p in Path(path).iterdir()}


def wait_child(proc):
    """Waits for a child; returns (exit status, peak RSS in MiB) of that child alone."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024.0


# ---------------------------------------------------------------- toplog


# The admin key the nodes are started with (auth on, as by default) and
# loadgen sends; the same as benches/cluster_lib.sh's.
ADMIN_KEY = "tlk_0000000a11ce_00000000000000000000000000000000000000ad"


def start_toplog(work, name, *flags, fresh=True):
    """A release node on a free port with the data directory `work/name`
    (emptied first if `fresh`), once ready; returns (process, base URL, data
    directory, seconds until ready). Auth is on (the default), encryption off."""
    data = work / name
    if fresh:
        shutil.rmtree(data, ignore_errors=True)
    port = free_port()
    started = time.monotonic()
    server = subprocess.Popen(
        [binary("toplog"), "serve", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}", *flags],
        stderr=open(work / f"{name}.log", "a"),
        env=dict(os.environ, TOPLOG_ADMIN_KEY=ADMIN_KEY),
    )
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, server)
    return server, base, data, time.monotonic() - started


def wait_ready(base, server):
    deadline = time.time() + 120
    while True:
        try:
            if urllib.request.urlopen(base + "/readyz", timeout=1).status == 200:
                return
        except OSError:
            pass
        if time.time() > deadline or server.poll() is not None:
            server.kill()
            raise SystemExit(f"toplog at {base} did not become ready")
        time.sleep(0.05)


def loadgen(*argv, pin=None):
    """Runs loadgen with the admin key; `pin`: the CPU to pin it to (taskset)."""
    cmd = [binary("loadgen"), *argv]
    if pin is not None:
        cmd = ["taskset", "-c", str(pin), *cmd]
    subprocess.run(cmd, check=True, env=dict(os.environ, TOPLOG_API_KEY=ADMIN_KEY))


def stop(server, work, name):
    server.send_signal(signal.SIGTERM)
    code, peak = wait_child(server)
    if code != 0:
        raise SystemExit(f"toplog exited with {code}; see {work / f'{name}.log'}")
    return peak


def run_toplog(args, work, workload):
    """NDJSON ingest and the query mix; the first run of each query after a
    restart; gRPC ingest; ingest into a 3-node cluster."""
    server, base, data, _ = start_toplog(work, "toplog-data", "--fsync", "always")
    report = work / "toplog-report.json"
    log(f"toplog: sending {args.events} events over HTTP, then the query mix")
    loadgen("send", *workload, "--server", base, "--server-pid", str(server.pid),
            "--connections", str(args.connections), "--batch", str(args.batch),
            "--repeat", str(args.repeat), "--now", str(args.now), "--report", str(report))
    peak = stop(server, work, "toplog-data")
    doc = json.loads(report.read_text())
    parts = dir_parts(data)
    out = {
        "ingest_per_s": doc["ingest"]["events_per_s"],
        "freshness_ms": doc["ingest"].get("freshness_ms"),
        "cpu_us_per_event": doc["ingest"]["server_cpu_s"] / args.events * 1e6,
        "ingest_peak_rss_mib": doc["ingest"]["peak_rss_mib"],
        "bytes_per_event": parts.get("segments", 0) / args.events,
        "all_bytes_per_event": sum(parts.values()) / args.events,
        "parts_per_event": {k: v / args.events for k, v in parts.items() if v},
        "peak_rss_mib": peak,
        "queries": doc["queries"],
    }

    log("toplog: restarting on the same data, then each query once")
    server, base, data, took = start_toplog(work, "toplog-data", "--fsync", "always", fresh=False)
    first = work / "toplog-first.json"
    loadgen("query", "--server", base, "--repeat", "1", "--now", str(args.now), "--report", str(first))
    stop(server, work, "toplog-data")
    out["restart_s"] = took
    out["first_run_ms"] = {q["name"]: q["http_ms"]["p50"] for q in json.loads(first.read_text())["queries"]}
    shutil.rmtree(data, ignore_errors=True)

    log(f"toplog: sending {args.events} events over gRPC, loadgen pinned to CPU 1")
    server, base, data, _ = start_toplog(work, "toplog-grpc", "--fsync", "always")
    grpc = work / "toplog-grpc.json"
    loadgen("send", *workload, "--server", base, "--server-pid", str(server.pid), "--protocol", "grpc",
            "--connections", str(args.connections), "--batch", str(args.batch), "--probes", "0",
            "--repeat", "0", "--now", str(args.now), "--report", str(grpc), pin=1)
    stop(server, work, "toplog-grpc")
    shutil.rmtree(data, ignore_errors=True)
    g = json.loads(grpc.read_text())["ingest"]
    out["grpc_per_s"] = g["events_per_s"]
    out["grpc_cpu_us_per_event"] = g["server_cpu_s"] / args.events * 1e6
    out["cluster"] = run_cluster(args, work, workload)
    return out


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_cluster(args, work, workload):
    """The same events over HTTP to the leader of a 3-node cluster on this
    machine (all three share its cores and disk); each node's CPU seconds."""
    secret = work / "cluster-secret"
    secret.write_text(os.urandom(16).hex())
    ports = [free_port() for _ in range(3)]
    spec = ",".join(f"{i + 1}=http://127.0.0.1:{p}" for i, p in enumerate(ports))
    nodes = []
    for i, port in enumerate(ports):
        name = f"cluster-{i + 1}"
        shutil.rmtree(work / name, ignore_errors=True)
        proc = subprocess.Popen(
            [binary("toplog"), "serve", "--data-dir", str(work / name), "--listen", f"127.0.0.1:{port}",
             "--node-id", str(i + 1), "--cluster", spec, "--cluster-secret-file", str(secret)],
            stderr=open(work / f"{name}.log", "w"),
            env=dict(os.environ, TOPLOG_ADMIN_KEY=ADMIN_KEY),
        )
        nodes.append((proc, f"http://127.0.0.1:{port}", name))
    for proc, base, _ in nodes:
        wait_ready(base, proc)
    leader = 0
    deadline = time.time() + 60
    while not leader:
        req = urllib.request.Request(nodes[0][1] + "/api/v1/cluster",
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        leader = json.load(urllib.request.urlopen(req))["data"].get("leader_id") or 0
        if not leader and time.time() > deadline:
            raise SystemExit("the cluster elected no leader")
        time.sleep(0.1)
    proc, base, _ = nodes[leader - 1]
    log(f"toplog: sending {args.events} events over HTTP to the leader of a 3-node cluster")
    report = work / "toplog-cluster.json"
    loadgen("send", *workload, "--server", base, "--server-pid", str(proc.pid),
            "--connections", str(args.connections), "--batch", str(args.batch), "--probes", "0",
            "--repeat", "0", "--now", str(args.now), "--report", str(report))
    cpu = [cpu_seconds(p.pid) for p, _, _ in nodes]
    for p, _, name in nodes:
        stop(p, work, name)
        shutil.rmtree(work / name, ignore_errors=True)
    doc = json.loads(report.read_text())["ingest"]
    return {
        "per_s": doc["events_per_s"],
        "leader": leader,
        "cpu_us_per_event": [c / args.events * 1e6 for c in cpu],
    }


# ---------------------------------------------------------------- peers

DUCK_COLUMNS = (
    "{'request_id': 'VARCHAR', 'timestamp': 'TIMESTAMP', 'user_id': 'VARCHAR', 'endpoint': 'VARCHAR', "
    "'method': 'VARCHAR', 'status_code': 'USMALLINT', 'latency_ms': 'DOUBLE'}"
)
CH_COLUMNS = (
    "request_id String, timestamp DateTime64(6, 'UTC'), user_id String, endpoint String, "
    "method String, status_code UInt16, latency_ms Float64"
)
CH_TABLE = """CREATE TABLE requests (
    timestamp DateTime64(6, 'UTC') CODEC(Delta, ZSTD),
    request_id String,
    user_id String,
    endpoint LowCardinality(String),
    method LowCardinality(String),
    status_code UInt16,
    latency_ms Float64
) ENGINE = MergeTree
PARTITION BY toDate(timestamp)
ORDER BY (toStartOfHour(timestamp), endpoint, timestamp)"""
CH_ROLLUP = """CREATE TABLE requests_1m (
    minute DateTime('UTC'),
    endpoint LowCardinality(String),
    requests SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    latency_sum SimpleAggregateFunction(sum, Float64),
    latency_q AggregateFunction(quantileTDigest(0.99), Float64)
) ENGINE = AggregatingMergeTree
PARTITION BY toDate(minute)
ORDER BY (minute, endpoint)"""
CH_ROLLUP_VIEW = """CREATE MATERIALIZED VIEW requests_1m_mv TO requests_1m AS
SELECT toStartOfMinute(timestamp) AS minute, endpoint, count() AS requests,
       countIf(status_code >= 500) AS errors, sum(latency_ms) AS latency_sum,
       quantileTDigestState(0.99)(latency_ms) AS latency_q
FROM requests GROUP BY minute, endpoint"""

GROUP_COLUMN = {"endpoint": "endpoint", "user_id": "user_id"}


def sql_literal(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "''") + "'"


# What differs between the two SQL dialects for the raw table.
DIALECTS = {
    "duckdb": {
        "range": lambda a, b: f"timestamp >= make_timestamp({a}) AND timestamp < make_timestamp({b})",
        "count": "count(*)",
        "errors": "count_if(status_code >= 500)",
        "p99": "quantile_disc(latency_ms, 0.99)",
        "day": "strftime(date_trunc('day', timestamp), '%Y-%m-%d')",
        "minute_us": "epoch_us(date_trunc('minute', timestamp))",
    },
    "clickhouse": {
        "range": lambda a, b: (f"timestamp >= fromUnixTimestamp64Micro(toInt64({a}), 'UTC') "
                               f"AND timestamp < fromUnixTimestamp64Micro(toInt64({b}), 'UTC')"),
        "count": "count()",
        "errors": "countIf(status_code >= 500)",
        "p99": "quantileExact(0.99)(latency_ms)",
        "day": "toString(toDate(timestamp))",
        "minute_us": "toUnixTimestamp(toStartOfMinute(timestamp)) * 1000000",
    },
}


def raw_sql(q, dialect):
    """The query `q` of the mix over the raw `requests` table."""
    d = DIALECTS[dialect]
    where = d["range"](q["start_us"], q["end_us"])
    count = d["count"]
    if q["kind"] == "top_k":
        col = GROUP_COLUMN[q["by"]]
        value = {"frequency": count, "latency_p99": d["p99"], "error_rate": f"{d['errors']} / {count}",
                 "errors": d["errors"], "latency_max": "max(latency_ms)"}[q["metric"]]
        return (f"SELECT {col}, {value} AS v, {count} AS c FROM requests WHERE {where} GROUP BY {col} "
                f"HAVING {count} >= {max(q['min_count'], 1)} ORDER BY v DESC, {col} LIMIT 10")
    if q["kind"] == "history":
        return (f"SELECT {d['day']} AS d, {count}, avg(latency_ms), {d['errors']} / {count}, {d['p99']} "
                f"FROM requests WHERE {where} GROUP BY d ORDER BY d")
    return (f"SELECT {d['minute_us']} AS m, {count} FROM requests "
            f"WHERE endpoint = {sql_literal(q['endpoint'])} AND {where} GROUP BY m ORDER BY m")


def rollup_sql(q):
    """The query `q` over ClickHouse's 1-minute rollup, or `None` if the rollup
    cannot answer it: it holds per-endpoint counts, errors, latency sums and a
    t-digest, on whole minutes (every range of the mix is)."""
    if q["by"] == "user_id" or q["start_us"] % 60_000_000 or q["end_us"] % 60_000_000:
        return None
    where = (f"minute >= toDateTime({q['start_us'] // 1_000_000}, 'UTC') "
             f"AND minute < toDateTime({q['end_us'] // 1_000_000}, 'UTC')")
    if q["kind"] == "top_k":
        value = {
            "frequency": "sum(requests)",
            "latency_p99": "quantileTDigestMerge(0.99)(latency_q)",
            "error_rate": "sum(errors) / sum(requests)",
        }[q["metric"]]
        return (f"SELECT endpoint, {value} AS v, sum(requests) AS c FROM requests_1m WHERE {where} "
                f"GROUP BY endpoint HAVING c >= {max(q['min_count'], 1)} ORDER BY v DESC, endpoint LIMIT 10")
    if q["kind"] == "history":
        return ("SELECT toString(toDate(minute)) AS d, sum(requests), sum(latency_sum) / sum(requests), "
                "sum(errors) / sum(requests), quantileTDigestMerge(0.99)(latency_q) "
                f"FROM requests_1m WHERE {where} GROUP BY d ORDER BY d")
    return (f"SELECT toUnixTimestamp(minute) * 1000000 AS m, sum(requests) FROM requests_1m "
            f"WHERE endpoint = {sql_literal(q['endpoint'])} AND {where} GROUP BY m ORDER BY m")


class Duck:
    def __init__(self, path):
        import duckdb

        self.path = path / "duck.db"
        self.con = duckdb.connect(str(self.path))

    def load(self, ndjson):
        self.con.execute(
            f"CREATE TABLE requests AS SELECT * FROM read_json({sql_literal(str(ndjson))}, "
            f"format = 'newline_delimited', columns = {DUCK_COLUMNS})"
        )
        self.con.execute("CHECKPOINT")

    def bytes(self):
        return self.path.stat().st_size

    def check_parquet(self, parquet):
        """The Parquet file holds the same events: rows, and per-endpoint
        counts, latency sums and 5xx counts, timestamps included."""
        src = f"read_parquet({sql_literal(str(parquet))})"
        per_endpoint = ("SELECT endpoint, count(*), sum(round(latency_ms * 1000)::BIGINT), count_if(status_code >= 500), "
                        "min(epoch_us(timestamp)), max(epoch_us(timestamp)) FROM {} GROUP BY endpoint")
        (rows,) = self.con.execute(f"SELECT count(*) FROM {src}").fetchone()
        differ = self.con.execute(
            f"({per_endpoint.format(src)}) EXCEPT ({per_endpoint.format('requests')})"
        ).fetchall()
        return {"rows": rows, "endpoints_differing": len(differ)}

    def query(self, q):
        return [list(r) for r in self.con.execute(raw_sql(q, "duckdb")).fetchall()]


class Click:
    def __init__(self, path, rollup):
        from chdb import session

        self.rollup = rollup
        self.s = session.Session(str(path / "ch"))
        self.run(CH_TABLE)
        if rollup:
            self.run(CH_ROLLUP)
            self.run(CH_ROLLUP_VIEW)

    def run(self, sql):
        res = self.s.query(sql, "JSONCompact")
        if hasattr(res, "has_error") and res.has_error():
            raise RuntimeError(f"{res.error_message()}\n{sql}")
        text = res.bytes() if hasattr(res, "bytes") else bytes(res)
        return json.loads(text)["data"] if text.strip() else []

    def load(self, ndjson):
        self.run(
            f"INSERT INTO requests SELECT timestamp, request_id, user_id, endpoint, method, status_code, latency_ms "
            f"FROM file({sql_literal(str(ndjson))}, 'JSONEachRow', {sql_literal(CH_COLUMNS)}) "
            "SETTINGS date_time_input_format = 'best_effort'"
        )

    def bytes(self):
        tables = "'requests', 'requests_1m'" if self.rollup else "'requests'"
        rows = self.run(f"SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND table IN ({tables})")
        return int(rows[0][0])

    def query(self, q):
        sql = (rollup_sql(q) if self.rollup else None) or raw_sql(q, "clickhouse")
        rows = self.run(sql)
        return [[float(v) if isinstance(v, str) and i > 0 and q["kind"] != "history" else v for i, v in enumerate(r)]
                for r in rows]


def peer_main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("engine", choices=PEERS)
    p.add_argument("--ndjson", required=True)
    p.add_argument("--parquet")
    p.add_argument("--dir", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--repeat", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    work = Path(a.dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    db = Duck(work) if a.engine == "duckdb" else Click(work, a.engine == "clickhouse-mv")
    t = time.perf_counter()
    db.load(a.ndjson)
    load_s = time.perf_counter() - t
    parquet = db.check_parquet(a.parquet) if a.parquet and a.engine == "duckdb" else None
    queries = json.loads(Path(a.queries).read_text())["queries"]
    results = []
    for q in queries:
        times, rows = [], None
        for _ in range(a.repeat):
            t = time.perf_counter()
            rows = db.query(q)
            times.append((time.perf_counter() - t) * 1000.0)
        results.append({"name": q["name"], "median_ms": statistics.median(times), "rows": rows})
    Path(a.out).write_text(
        json.dumps({"load_s": load_s, "bytes": db.bytes(), "parquet": parquet, "queries": results}, default=str)
    )


def run_peer(args, work, engine, ndjson, parquet, report):
    out = work / f"{engine}.json"
    log(f"{PEER_NAMES[engine]}: loading {ndjson.name} and running the mix")
    proc = subprocess.Popen(
        [sys.executable, __file__, "peer", engine, "--ndjson", str(ndjson), "--parquet", str(parquet),
         "--dir", str(work / engine),
         "--queries", str(report), "--repeat", str(args.repeat), "--out", str(out)]
    )
    code, peak = wait_child(proc)
    if code != 0:
        raise SystemExit(f"{engine} failed with {code}")
    doc = json.loads(out.read_text())
    shutil.rmtree(work / engine, ignore_errors=True)
    return {
        "ingest_per_s": args.events / doc["load_s"],
        "bytes_per_event": doc["bytes"] / args.events,
        "peak_rss_mib": peak,
        "parquet": doc.get("parquet"),
        "queries": doc["queries"],
    }


# ---------------------------------------------------------------- answers


def close(a, b, rel):
    return abs(float(a) - float(b)) <= rel * max(abs(float(a)), abs(float(b)), 1e-12)


def toplog_rows(q):
    """toplog's answer in the peers' row shape, with bounds for top-K rows."""
    data = q["answer"]["data"]
    if q["kind"] == "top_k":
        return [[r["request_id"], r["metric_value"], r["count"], r.get("lower"), r.get("upper")] for r in data]
    if q["kind"] == "history":
        return [[d["date"], d["total_requests"], d["average_latency"], d["error_rate"], d["p99_latency"]]
                for d in data if d["total_requests"] > 0]
    points = data[0]["points"] if data else []
    return [[int(time_us(p["time"])), p["count"]] for p in points if p["count"] > 0]


def time_us(rfc3339):
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1_000_000


def agreement(q, rows, ref, bounds=False):
    """How an engine's answer compares with DuckDB's exact one."""
    if q["kind"] == "top_k" and q["metric"] == "latency_p99":
        # Quantiles: toplog's sketch is within 1%, ClickHouse's t-digest is approximate.
        ref_by_key = {r[0]: r for r in ref}
        common = [r for r in rows if r[0] in ref_by_key]
        within = all(close(r[1], ref_by_key[r[0]][1], 0.02) and r[2] == ref_by_key[r[0]][2] for r in common)
        tag = "p99 within 2%" if within else "p99 off by >2%"
        return f"{len(common)}/10 keys, {tag}"
    if q["kind"] == "top_k":
        if [r[0] for r in rows] != [r[0] for r in ref]:
            return "DIFFERENT KEYS"
        if bounds and any(r[3] is not None for r in rows):
            ok = all((r[3] or r[1]) <= t[1] <= (r[4] or r[1]) for r, t in zip(rows, ref))
            return "same keys, true values within bounds" if ok else "OUT OF BOUNDS"
        same = all(close(r[1], t[1], 1e-9) and r[2] == t[2] for r, t in zip(rows, ref))
        return "exact" if same else "DIFFERENT VALUES"
    if q["kind"] == "history":
        if [r[0] for r in rows] != [r[0] for r in ref]:
            return "DIFFERENT DAYS"
        exact = all(int(r[1]) == int(t[1]) and close(r[3], t[3], 1e-9) and close(r[2], t[2], 1e-6)
                    for r, t in zip(rows, ref))
        p99 = all(close(r[4], t[4], 0.02) for r, t in zip(rows, ref))
        return ("exact" if exact else "DIFFERENT COUNTS") + ("" if p99 else ", p99 off by >2%")
    same = [(int(r[0]), int(r[1])) for r in rows] == [(int(r[0]), int(r[1])) for r in ref]
    return "exact" if same else "DIFFERENT SERIES"


# ---------------------------------------------------------------- table


def fmt_ms(v):
    return f"{v:.2f} ms" if v >= 0.1 else f"{v * 1000:.0f} µs"


def table(args, toplog, peers):
    cols = ["toplog"] + [PEER_NAMES[p] for p in PEERS] + ["toplog vs best peer"]
    out = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]

    def row(label, tv, pv, show, better):
        best = better(pv)
        ratio = tv / best if better is max else best / tv
        verdict = "better" if ratio >= 1 else "worse"
        out.append(f"| {label} | {show(tv)} | " + " | ".join(show(v) for v in pv)
                   + f" | {ratio:.2f}x ({verdict}) |")

    row("ingest, events/s (toplog: HTTP NDJSON, fsync always; peers: load of the NDJSON file)",
        toplog["ingest_per_s"], [peers[p]["ingest_per_s"] for p in PEERS], lambda v: f"{v:,.0f}", max)
    row("raw data on disk, bytes/event (toplog: segments; ClickHouse + MV: both tables)",
        toplog["bytes_per_event"], [peers[p]["bytes_per_event"] for p in PEERS], lambda v: f"{v:.1f}", min)
    row("peak memory (RSS), MiB", toplog["peak_rss_mib"], [peers[p]["peak_rss_mib"] for p in PEERS],
        lambda v: f"{v:,.0f}", min)
    for i, q in enumerate(toplog["queries"]):
        tv = q["http_ms"]["p50"]
        pv = [peers[p]["queries"][i]["median_ms"] for p in PEERS]
        inside = f" ({fmt_ms(q['inside_ms']['p50'])} inside)" if q.get("inside_ms") else ""
        best = min(pv)
        out.append(f"| {q['name']}, median | {fmt_ms(tv)}{inside} | " + " | ".join(fmt_ms(v) for v in pv)
                   + f" | {best / tv:.1f}x {'faster' if best >= tv else 'slower'} |")
    return "\n".join(out)


def own_table(args, t, peers):
    """The rows no peer has an equivalent of (issue 23's table)."""
    ch = peers["clickhouse"]["ingest_per_s"]
    c = t["cluster"]
    parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(t["parts_per_event"].items(), key=lambda kv: -kv[1]))
    slowest = sorted(t["first_run_ms"].items(), key=lambda kv: -kv[1])[:3]
    rows = [
        ("durable ingest, gRPC batches (fsync always, auth on, encryption off; loadgen pinned to CPU 1)",
         f"{t['grpc_per_s']:,.0f} events/s ({t['grpc_per_s'] / ch:.2f}x ClickHouse raw)"),
        ("durable ingest, NDJSON over HTTP (same settings)",
         f"{t['ingest_per_s']:,.0f} events/s ({t['ingest_per_s'] / ch:.2f}x ClickHouse raw, "
         f"{t['ingest_per_s'] / peers['clickhouse-mv']['ingest_per_s']:.2f}x with its MV)"),
        ("ingest on a 3-node cluster on this machine (NDJSON to the leader)",
         f"{c['per_s']:,.0f} events/s; server CPU per event by node: "
         + ", ".join(f"node {i + 1}{' (leader)' if i + 1 == c['leader'] else ''} {v:.2f} µs"
                     for i, v in enumerate(c["cpu_us_per_event"]))),
        ("server CPU per ingested event", f"{t['grpc_cpu_us_per_event']:.2f} µs over gRPC, "
                                          f"{t['cpu_us_per_event']:.2f} µs over NDJSON"),
        ("peak RSS while ingesting (and through the query mix)",
         f"{t['ingest_peak_rss_mib']:,.0f} MiB ({t['peak_rss_mib']:,.0f} MiB)"),
        ("whole data dir, bytes per event", f"{t['all_bytes_per_event']:.1f} ({parts})"),
        ("each query's first run after a restart (slowest three)",
         "; ".join(f"{name} {fmt_ms(ms)}" for name, ms in slowest) + f" (restart took {t['restart_s']:.1f} s)"),
        ("freshness p99 (ack to visible in top-K)",
         f"{t['freshness_ms']['p99']:.1f} ms" if t.get("freshness_ms") else "n/a"),
    ]
    return "\n".join(["| toplog | this run |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "peer":
        return peer_main(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--days", type=float, default=30)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--workdir", default="/var/tmp/toplog-compare")
    p.add_argument("--no-build", action="store_true")
    args = p.parse_args()
    ensure_packages()
    if not args.no_build:
        build()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    # Fixed instants on whole minutes: the events end a minute before the
    # queries' ranges do, and both are a little in the past.
    args.now = int(time.time()) // 60 * 60 - 60
    workload = ["--events", str(args.events), "--days", str(args.days), "--end", str(args.now - 60)]
    ndjson, parquet = work / "events.ndjson", work / "events.parquet"
    log("generating the workload as NDJSON and Parquet")
    subprocess.run([binary("loadgen"), "generate", *workload, "--out", str(ndjson)], check=True)
    subprocess.run([binary("loadgen"), "generate", *workload, "--out", str(parquet)], check=True)
    toplog = run_toplog(args, work, workload)
    report = work / "toplog-report.json"
    peers = {e: run_peer(args, work, e, ndjson, parquet, report) for e in PEERS}

    print()
    print(f"{args.events:,} events over {args.days:g} days; {os.cpu_count()} cores; "
          f"NDJSON {ndjson.stat().st_size / 2**20:,.0f} MiB, Parquet {parquet.stat().st_size / 2**20:,.0f} MiB")
    if toplog.get("freshness_ms"):
        f = toplog["freshness_ms"]
        print(f"toplog freshness (acknowledged -> in a top-K answer): p50 {f['p50']:.1f} ms, p99 {f['p99']:.1f} ms; "
              f"whole data dir {toplog['all_bytes_per_event']:.1f} bytes/event")
    pq = peers["duckdb"]["parquet"]
    same = pq["rows"] == args.events and pq["endpoints_differing"] == 0
    print(f"Parquet file read by DuckDB: {pq['rows']:,} rows, {pq['endpoints_differing']} endpoints whose count, "
          f"latency sum, 5xx count or time span differ from the NDJSON's: {'same events' if same else 'DIFFERENT'}")
    print()
    print(table(args, toplog, peers))
    print()
    print(own_table(args, toplog, peers))
    print()
    print("Answers checked against DuckDB's exact answers:")
    ref = peers["duckdb"]["queries"]
    print("| query | toplog | ClickHouse | ClickHouse + 1m MV |")
    print("|---|---|---|---|")
    for i, q in enumerate(toplog["queries"]):
        r = ref[i]["rows"]
        print(f"| {q['name']} | {agreement(q, toplog_rows(q), r, bounds=True)} | "
              f"{agreement(q, peers['clickhouse']['queries'][i]['rows'], r)} | "
              f"{agreement(q, peers['clickhouse-mv']['queries'][i]['rows'], r)} |")
    (work / "results.json").write_text(json.dumps({"toplog": toplog, "peers": peers}, default=str, indent=1))


if __name__ == "__main__":
    main()
