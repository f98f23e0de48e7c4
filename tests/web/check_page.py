#!/usr/bin/env python3
"""Headless-browser check of toplog's web page (Selenium + system Chromium).

    python3 tests/web/check_page.py --base http://127.0.0.1:8080 --key tlk_... [--screenshots docs/screenshots]

It ingests a known data set (spread over 30 days so that the last 15 minutes,
24 hours, 7 days and 30 days each have a different top endpoint), opens the
page, and checks sign-in, the top-K tables against the API, the charts, the
range picker, filtering by a key, live refresh, the phone layout and sign-out.
Exits 0 only if every check passes.
"""
import argparse
import json
import math
import os
import random
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

DIMS = ["endpoint", "user_id", "status_code"]
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
RANGE_MS = {"15m": 15 * MIN, "1h": HOUR, "6h": 6 * HOUR, "24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY}


class CheckFailed(Exception):
    pass


def log(msg):
    print(msg, flush=True)


def check(name, cond, detail=""):
    if not cond:
        raise CheckFailed(f"{name}: {detail}" if detail else name)
    log(f"  ok   {name}")


# ---------- the API, from the script ----------

class Api:
    def __init__(self, base, key):
        self.base, self.key = base.rstrip("/"), key

    def call(self, method, path, params=None, body=None):
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", "Bearer " + self.key)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            raise CheckFailed(f"{method} {path} answered {e.code}: {e.read()[:300]!r}") from None

    def get(self, path, **params):
        return self.call("GET", path, params)

    def ingest(self, events):
        for i in range(0, len(events), 20_000):
            self.call("POST", "/api/v1/requests", body=events[i:i + 20_000])


# ---------- the data set ----------

ENDPOINTS = [  # (endpoint, base latency ms, 5xx rate)
    ("GET /api/v1/items/{id}", 18, 0.01), ("GET /api/v1/search", 85, 0.02),
    ("POST /api/v1/orders", 140, 0.06), ("GET /api/v1/users/{id}", 12, 0.005),
    ("POST /api/v1/login", 60, 0.03), ("GET /healthz", 0.6, 0.0),
    ("DELETE /api/v1/items/{id}", 35, 0.02), ("PUT /api/v1/users/{id}/settings", 45, 0.04),
    # a long key: it must truncate inside its table, also on a phone
    ("GET /api/v1/organizations/{org_id}/projects/{project_id}/environments/{environment_id}/deployments/{deployment_id}/logs",
     220, 0.03),
]
# windows (from, to ago in ms), events, the endpoint that dominates them
WINDOWS = [
    (14 * MIN, 20_000, 600, "GET /api/v1/search"),         # last 15 min
    (23.5 * HOUR, 1 * HOUR, 3000, "GET /api/v1/items/{id}"),  # last 24 h
    (6.9 * DAY, 1.05 * DAY, 6000, "POST /api/v1/orders"),     # last 7 d
    (29.5 * DAY, 7.1 * DAY, 9000, "GET /api/v1/users/{id}"),  # last 30 d
]
USERS = [f"user-{i:03d}" for i in range(1, 41)]
USERS.insert(2, "svc-batch-exporter-3f9c2b7e-1d4a-4f6b-9e2c-7a8b9c0d1e2f@internal.example.com")


def make_events(now_ms, rng):
    """Deterministic (given now) events: diurnal traffic, a latency tail, some 4xx/5xx."""
    events = []
    user_w = [1 / (i + 1) ** 0.9 for i in range(len(USERS))]
    for ago_from, ago_to, n, hot in WINDOWS:
        ep_w = [6 if e == hot else 1 for e, _, _ in ENDPOINTS]
        made = 0
        while made < n:
            t = now_ms - rng.uniform(ago_to, ago_from)
            hour = (t / HOUR) % 24
            if rng.random() > 0.55 + 0.45 * math.sin((hour - 8) / 24 * 2 * math.pi):
                continue  # fewer requests at night (UTC)
            ep, base, err = rng.choices(ENDPOINTS, ep_w)[0]
            lat = base * math.exp(rng.gauss(0, 0.5))
            if rng.random() < 0.02:
                lat *= rng.uniform(5, 30)  # the tail
            r = rng.random()
            status = 503 if r < err * 0.6 else 500 if r < err else 404 if r < err + 0.03 else (201 if ep.startswith("POST") else 200)
            user = "" if rng.random() < 0.05 else rng.choices(USERS, user_w)[0]
            events.append({"timestamp": int(t), "endpoint": ep, "user_id": user, "status_code": status,
                           "latency_ms": round(lat, 3)})
            made += 1
    return events


# ---------- the page ----------

SNAPSHOT_JS = """
const r = document.getElementById('range').dataset;
const tables = {};
for (const by of arguments[0]) {
  tables[by] = [...document.querySelectorAll('#top-' + by + ' tbody tr')]
    .map((tr) => [tr.dataset.key, tr.dataset.value, tr.dataset.count]);
}
return {start: r.start, end: r.end, metric: r.metric, filter: r.filter, tables};
"""


def start_browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1366,900"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def wait(driver, what, fn, timeout=10):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: fn(d))
    except TimeoutException:
        raise CheckFailed(f"timed out after {timeout}s waiting for {what}") from None


def shown(driver, css):
    els = driver.find_elements(By.CSS_SELECTOR, css)
    return bool(els) and els[0].is_displayed()


def snapshot(driver):
    return driver.execute_script(SNAPSHOT_JS, DIMS)


def wait_range(driver, range_name, metric="frequency", flt=""):
    """Wait until the page shows an answer for this range, metric and filter."""
    def ready(d):
        s = snapshot(d)
        if not s["start"] or s["metric"] != metric or (s["filter"] or "") != flt:
            return False
        return int(s["end"]) - int(s["start"]) == RANGE_MS[range_name] and s
    return wait(driver, f"the page to show range {range_name} ({metric})", ready, 15)


def compare_tables(api, snap, label):
    """The page's three tables must equal the API's answers for the same range."""
    for by in DIMS:
        body = api.get("/api/v1/requests/top-k", k=10, metric=snap["metric"], by=by,
                       start=snap["start"], end=snap["end"])
        want = [(r["request_id"], float(r["metric_value"]), int(r["count"])) for r in body["data"]]
        got = [(k, float(v), int(c)) for k, v, c in snap["tables"][by]]
        check(f"{label}: top {by} ({len(got)} rows) equals the API", got == want,
              f"\n    page: {got}\n    api:  {want}")


def console_errors(driver):
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def screenshot(driver, shots, name, full=False):
    if not shots:
        return
    path = os.path.join(shots, name)
    if full:  # the whole page: make the viewport as tall as the document for a moment
        size = driver.get_window_size()
        h = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(size["width"], min(max(h + 140, size["height"]), 4000))
        time.sleep(0.4)  # charts redraw on resize (debounced)
        driver.save_screenshot(path)
        driver.set_window_size(size["width"], size["height"])
    else:
        driver.save_screenshot(path)
    log(f"  shot {path} ({os.path.getsize(path) // 1024} KiB)")


def run(args):
    api = Api(args.base, args.key)
    t_start = time.time()

    log("seeding data")
    check("the node is ready", api.get("/api/v1/retention")["status"] == "success")
    now = int(time.time() * 1000)
    events = make_events(now, random.Random(7))
    api.ingest(events)
    log(f"  ingested {len(events)} events over 30 days")

    driver = start_browser()
    try:
        log("sign-in")
        driver.execute_cdp_cmd("Network.enable", {})
        driver.get(args.base.rstrip("/") + "/")
        driver.execute_script("sessionStorage.clear()")
        driver.get(args.base.rstrip("/") + "/")
        wait(driver, "the sign-in form", lambda d: shown(d, "#signin"))
        check("a visit without a key shows the sign-in form", shown(driver, "#signin-key"))
        check("the form asks for an API key", "API key" in driver.find_element(By.ID, "signin").text)
        check("no data is shown before signing in",
              not shown(driver, "#dash") and not driver.find_elements(By.CSS_SELECTOR, "tr[data-key]"))
        screenshot(driver, args.screenshots, "signin.png")
        driver.get_log("browser")  # the 401s of the unauthenticated visit are expected

        driver.find_element(By.ID, "signin-key").send_keys("tlk_000000000000_" + "0" * 40)
        driver.find_element(By.ID, "signin-submit").click()
        wait(driver, "a refused key to be reported", lambda d: "refused" in d.find_element(By.ID, "signin-error").text)
        check("a wrong key is refused and the form stays", shown(driver, "#signin") and not shown(driver, "#dash"))
        driver.get_log("browser")  # its 401 is expected too

        driver.find_element(By.ID, "signin-key").clear()
        driver.find_element(By.ID, "signin-key").send_keys(args.key)
        driver.find_element(By.ID, "signin-submit").click()
        wait(driver, "the dashboard", lambda d: shown(d, "#dash") and d.find_elements(By.CSS_SELECTOR, "#top-endpoint tbody tr"))
        check("signing in shows the dashboard", not shown(driver, "#signin"))
        check("the key is kept in sessionStorage only",
              driver.execute_script("return sessionStorage.getItem('toplog-key') === arguments[0] && localStorage.length === 0 && document.cookie === ''", args.key))
        errs = console_errors(driver)
        check("no SEVERE console errors after signing in", not errs, errs)

        log("range picker and top-K tables")
        seen = {}
        for rng in ("15m", "24h", "7d"):
            Select(driver.find_element(By.ID, "range-select")).select_by_value(rng)
            snap = wait_range(driver, rng)
            compare_tables(api, snap, rng)
            seen[rng] = snap["tables"]["endpoint"]
        check("15m and 24h answers differ", seen["15m"] != seen["24h"], seen["15m"])
        check("24h and 7d answers differ", seen["24h"] != seen["7d"], seen["24h"])
        seeded = {e for e, _, _ in ENDPOINTS}  # (earlier runs' live-check endpoints may rank too)
        tops = [next(k for k, _, _ in seen[r] if k in seeded) for r in ("15m", "24h", "7d")]
        check("each range's busiest seeded endpoint is the one seeded for it", tops == [w[3] for w in WINDOWS[:3]], tops)

        Select(driver.find_element(By.ID, "metric-select")).select_by_value("latency_p99")
        snap = wait_range(driver, "7d", "latency_p99")
        compare_tables(api, snap, "7d latency_p99")
        check("an inexact answer is marked", driver.execute_script(
            "const c = document.getElementById('top-endpoint').closest('.card'); "
            "return !c.querySelector('.inexact').hidden && c.querySelector('tbody td:nth-child(3)').textContent.startsWith('≈')"))
        Select(driver.find_element(By.ID, "metric-select")).select_by_value("frequency")
        snap = wait_range(driver, "7d")

        log("charts")
        geo = driver.execute_script("""
            const bars = [...document.querySelectorAll('#chart-requests svg rect.bar')];
            const lines = [...document.querySelectorAll('#chart-latency svg path.line, #chart-error-rate svg path.line')];
            return {bars: bars.length, area: bars.reduce((a, r) => a + r.width.baseVal.value * r.height.baseVal.value, 0),
                    lines: lines.length, longest: Math.max(0, ...lines.map((p) => p.getTotalLength())),
                    ticks: document.querySelectorAll('#chart-requests svg text').length,
                    total: +document.getElementById('chart-requests').dataset.total}""")
        check("#chart-requests draws bars", geo["bars"] >= 5 and geo["area"] > 100, geo)
        check("latency and error-rate charts draw lines", geo["lines"] >= 2 and geo["longest"] > 50, geo)
        check("the charts have axis labels", geo["ticks"] >= 5, geo)
        series = api.get("/api/v1/requests/timeseries", metric="frequency", interval="1h", start=snap["start"], end=snap["end"])
        api_total = sum(p["value"] for p in series["data"][0]["points"])
        check("the requests chart sums to the API's series", geo["total"] == api_total, (geo["total"], api_total))
        screenshot(driver, args.screenshots, "desktop.png", full=True)

        log("filter by key")
        key = seen["7d"][1][0]  # the second endpoint, so the total differs clearly
        btn = driver.find_element(By.CSS_SELECTOR, f"#top-endpoint tbody tr:nth-child(2) .keybtn")
        btn.click()
        wait_range(driver, "7d", flt="endpoint=" + key)
        chip = driver.find_element(By.ID, "chip")
        check("the chip shows the key", chip.is_displayed() and key in chip.text, chip.text)
        snap = snapshot(driver)
        total = float(driver.find_element(By.ID, "chart-requests").get_attribute("data-total"))
        series = api.get("/api/v1/requests/timeseries", metric="frequency", interval="1h", start=snap["start"],
                         end=snap["end"], endpoint=key)
        want = sum(p["value"] for p in series["data"][0]["points"])
        check("the requests chart shows that key only", total == want and total < geo["total"], (total, want, geo["total"]))
        screenshot(driver, args.screenshots, "desktop-key.png", full=True)
        driver.find_element(By.ID, "chip-clear").click()
        wait_range(driver, "7d", flt="")
        check("clearing the chip shows every key again", not driver.find_element(By.ID, "chip").is_displayed())

        log("phone width")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 375, "height": 812, "deviceScaleFactor": 1, "mobile": True})
        Select(driver.find_element(By.ID, "range-select")).select_by_value("24h")
        wait_range(driver, "24h")
        time.sleep(0.3)  # charts redraw at the new width
        w = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        check(f"no horizontal scroll at 375 px (scrollWidth {w[0]}, innerWidth {w[1]})", w[1] == 375 and w[0] <= w[1], w)
        screenshot(driver, args.screenshots, "phone.png")
        if args.screenshots:  # and the whole page, as tall as it is
            h = driver.execute_script("return document.documentElement.scrollHeight")
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": 375, "height": min(h, 6000), "deviceScaleFactor": 1, "mobile": True})
            time.sleep(0.3)
            screenshot(driver, args.screenshots, "phone-full.png")
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

        log("live refresh")
        Select(driver.find_element(By.ID, "range-select")).select_by_value("15m")
        wait_range(driver, "15m")
        top = api.get("/api/v1/requests/top-k", k=10, metric="frequency", by="endpoint",
                      start=int(time.time() * 1000) - 15 * MIN, end=int(time.time() * 1000))["data"]
        n = max(500, (top[-1]["count"] + 50) if len(top) == 10 else 0)
        live = "GET /api/v1/live-" + uuid.uuid4().hex[:8]
        t_ing = time.time()
        now = int(t_ing * 1000)
        api.ingest([{"timestamp": now - i * 10, "endpoint": live, "user_id": "live-check", "status_code": 200,
                     "latency_ms": 5} for i in range(n)])
        wait(driver, f"{live} in the endpoints table", lambda d: d.execute_script(
            "return [...document.querySelectorAll('#top-endpoint tbody tr')].some((tr) => tr.dataset.key === arguments[0])",
            live), 10)
        check(f"a new endpoint ({n} events) shows within 10 s ({time.time() - t_ing:.1f} s)", True)
        check("the page says when it was updated", driver.find_element(By.ID, "updated").text.startswith("updated "))

        errs = console_errors(driver)
        check("no SEVERE console errors while signed in", not errs, errs)

        log("sign-out")
        driver.find_element(By.ID, "signout").click()
        wait(driver, "the sign-in form after signing out", lambda d: shown(d, "#signin"))
        check("signing out clears the key", driver.execute_script("return sessionStorage.getItem('toplog-key')") is None)
        check("signing out hides the data", not shown(driver, "#dash"))
        driver.refresh()
        wait(driver, "the sign-in form after a reload", lambda d: shown(d, "#signin"))
        check("a reload after signing out still asks for a key", not shown(driver, "#dash"))

        log("a viewer key")
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        viewer = api.call("POST", "/api/v1/keys", body={"name": "web-check viewer", "role": "viewer",
                                                         "expires_at": expires})["data"]
        try:
            driver.find_element(By.ID, "signin-key").send_keys(viewer["key"])
            driver.find_element(By.ID, "signin-submit").click()
            wait(driver, "the dashboard for a viewer",
                 lambda d: shown(d, "#dash") and d.find_elements(By.CSS_SELECTOR, "#top-endpoint tbody tr"))
            note = wait(driver, "a note in the cluster section", lambda d: d.execute_script(
                "return document.getElementById('cluster').closest('.card').querySelector('.note').textContent"))
            check("a section the role may not read says so, the rest still shows",
                  "may not" in note and shown(driver, "#chart-requests svg"), note)
            driver.find_element(By.ID, "signout").click()
            wait(driver, "the sign-in form", lambda d: shown(d, "#signin"))
        finally:
            api.call("DELETE", "/api/v1/keys/" + viewer["id"])
    finally:
        driver.quit()
    log(f"all checks passed in {time.time() - t_start:.1f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the node (or dev server), e.g. http://127.0.0.1:8080")
    ap.add_argument("--key", required=True, help="an admin API key")
    ap.add_argument("--screenshots", help="save screenshots into this folder")
    args = ap.parse_args()
    if args.screenshots:
        os.makedirs(args.screenshots, exist_ok=True)
    try:
        run(args)
    except CheckFailed as e:
        log(f"  FAIL {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
