#!/usr/bin/env python3
"""How long after a minute closes (plus the grace) an alert fires and its
notification reaches a webhook, with N rules loaded.

A node runs on a test clock (TOPLOG_TEST_CLOCK_FILE), so minutes close when
the script says: for each of M minutes of a 5xx burst on one endpoint, the
clock is moved to the minute's end plus the grace, and the script measures
the wall time until (a) every rule has judged that minute, (b) the alert is
in /api/v1/requests/alerts, (c) the webhook has the notification. The node's
own wait is `alert_grace` (not counted: the clock jumps past it); what is
measured is the rest, which the issue bounds at 10 seconds.

    python3 benches/alert_latency.py --bin target/release/toplog --rules 500

Only loopback traffic; the node and its data live in a temporary directory.
"""

import argparse
import http.server
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

MIN_MS = 60_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


class Hook(http.server.BaseHTTPRequestHandler):
    got = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        Hook.got.append((time.monotonic(), json.loads(body)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--rules", type=int, default=500)
    p.add_argument("--minutes", type=int, default=5)
    a = p.parse_args()

    tmp = tempfile.mkdtemp()
    clock = os.path.join(tmp, "clock")
    base_ms = (int(time.time() * 1000) - 60 * MIN_MS) // MIN_MS * MIN_MS
    grace_ms = 10_000

    def set_clock(ms):
        with open(clock + ".tmp", "w") as f:
            f.write(str(ms))
        os.replace(clock + ".tmp", clock)

    set_clock(base_ms)
    hook_port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", hook_port), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    port = free_port()
    env = dict(os.environ, TOPLOG_TEST_CLOCK_FILE=clock)
    proc = subprocess.Popen(
        [a.bin, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", os.path.join(tmp, "data"),
         "--auth", "off", "--alert-grace", f"{grace_ms // 1000}s"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        else:
            sys.exit("node did not become ready")

        # 20 minutes of traffic on 4 endpoints; GET /a fails half the time
        # from minute 10 on.
        events = []
        for m in range(20):
            for j in range(40):
                for e in ["GET /a", "GET /b", "GET /c", "GET /d"]:
                    failed = (e == "GET /a" and m >= 10 and j % 2 == 0) or j == 0
                    events.append({"request_id": f"{e}-{m}-{j}", "timestamp": base_ms + m * MIN_MS + j * 1000,
                                   "endpoint": e, "user_id": f"u{j % 7}", "method": "GET",
                                   "status_code": 500 if failed else 200, "latency_ms": 10.0 + j})
        call(base, "POST", "/api/v1/requests", events)

        hook = call(base, "POST", "/api/v1/alerts/channels",
                    {"name": "hook", "kind": "webhook", "url": f"http://127.0.0.1:{hook_port}/"})["data"]["id"]
        # The measured rule, and N - 1 others that never fire (half learned).
        watched = call(base, "POST", "/api/v1/alerts/rules", {
            "name": "5xx", "metric": "error_rate", "by": "endpoint", "window": "1m", "op": ">",
            "threshold": 0.2, "min_count": 10, "channels": [hook]})["data"]["id"]
        for i in range(a.rules - 1):
            threshold = {"learned": {"sensitivity": "medium"}} if i % 2 else 0.9 + i / 1e6
            call(base, "POST", "/api/v1/alerts/rules", {
                "name": f"other {i}", "metric": "error_rate", "by": "endpoint", "window": "5m",
                "op": ">", "threshold": threshold})
        rules = [r["id"] for r in call(base, "GET", "/api/v1/alerts/rules")["data"]]

        # Catch up to minute 10 (quiet).
        set_clock(base_ms + 10 * MIN_MS + grace_ms)
        time.sleep(3)
        judged, fired, notified = [], [], []
        for m in range(11, 11 + a.minutes):
            end_ms = base_ms + m * MIN_MS
            want = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(end_ms / 1000))
            before = len(Hook.got)
            t0 = time.monotonic()
            set_clock(end_ms + grace_ms)
            seen_judged = seen_fired = None
            while time.monotonic() - t0 < 60:
                if seen_judged is None:
                    through = {r["id"]: r.get("judged_through") for r in
                               call(base, "GET", "/api/v1/alerts/rules")["data"]}
                    if all(through.get(r) == want for r in rules):
                        seen_judged = time.monotonic() - t0
                if seen_fired is None and m == 11:
                    alerts = call(base, "GET", "/api/v1/requests/alerts")["alerts"]
                    if any(x["rule_id"] == watched and x["state"] == "firing" for x in alerts):
                        seen_fired = time.monotonic() - t0
                if seen_judged is not None and (m != 11 or seen_fired is not None):
                    break
                time.sleep(0.01)
            judged.append(seen_judged)
            if m == 11:
                fired.append(seen_fired)
                while len(Hook.got) == before and time.monotonic() - t0 < 60:
                    time.sleep(0.005)
                if len(Hook.got) > before:
                    notified.append(Hook.got[before][0] - t0)
        fmt = lambda xs: ", ".join("-" if x is None else f"{x * 1000:.0f} ms" for x in xs)
        print(f"rules: {a.rules}")
        print(f"every rule judged the minute, after its close + grace: {fmt(judged)}"
              f" (median {statistics.median([x for x in judged if x is not None]) * 1000:.0f} ms)")
        print(f"alert firing in /api/v1/requests/alerts: {fmt(fired)}")
        print(f"webhook notified: {fmt(notified)}")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        server.shutdown()


if __name__ == "__main__":
    main()
