#!/usr/bin/env python3
"""How long backups take, and what they copy, on a loaded node.

    CARGO_TARGET_DIR=/var/tmp/toplog-release python3 benches/backup.py --events 10000000 --days 30

1. Builds the release `toplog` and `loadgen`, starts a node (fsync always,
   auth on, the defaults) and sends it the workload over HTTP.
2. `toplog backup` into a folder: the first (everything copied), then one
   with nothing changed, then one while loadgen sends 10% more events
   (incremental), then one after.
3. `toplog backup verify` of all of them, and `toplog restore` of the last
   into a new directory; a node started there must hold as many events as
   the backup's log index says the original had then (checked by count).

Prints one row per step: seconds, files, bytes, and bytes copied.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (the node and loadgen helpers)


def toplog(*argv):
    started = time.monotonic()
    out = subprocess.run([compare.binary("toplog"), *argv], check=True, capture_output=True, text=True)
    return out.stdout, time.monotonic() - started


def count(base):
    req = urllib.request.Request(base + "/api/v1/requests/count?start=0",
                                 headers={"Authorization": "Bearer " + compare.ADMIN_KEY})
    return json.load(urllib.request.urlopen(req, timeout=60))["count"]


def backup(base):
    out, took = toplog("backup", "--server", base, "--api-key", compare.ADMIN_KEY, "--json")
    data = json.loads(out)["data"]
    return data, took


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--days", type=float, default=30)
    ap.add_argument("--work", default="/var/tmp/toplog-backup-bench")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    if not args.no_build:
        compare.build()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    location = work / "backups"
    config = work / "toplog.toml"
    config.write_text(f'[backup]\nurl = "{location}"\n')
    server, base, data, _ = compare.start_toplog(work, "node", "--config", str(config))
    workload = ["--events", str(args.events), "--days", str(args.days)]
    compare.log(f"sending {args.events} events")
    compare.loadgen("send", *workload, "--server", base, "--repeat", "0", "--probes", "0")
    rows = []

    def row(name, data, took):
        rows.append((name, took, data["files"], data["bytes"], data["copied_files"], data["copied_bytes"], data["index"]))
        compare.log(f"{name}: {took:.2f} s, {data['copied_bytes']} of {data['bytes']} bytes copied")

    first, took = backup(base)
    row("first backup", first, took)
    again, took = backup(base)
    row("again, nothing changed", again, took)
    # 10% more events, from another seed, while the third backup runs.
    more = max(args.events // 10, 1)
    sender = subprocess.Popen(
        [compare.binary("loadgen"), "send", "--events", str(more), "--days", "1", "--seed", "2",
         "--server", base, "--repeat", "0", "--probes", "0"],
        env=dict(compare.os.environ, TOPLOG_API_KEY=compare.ADMIN_KEY),
    )
    while count(base) <= args.events:  # until the first of them is in
        if sender.poll() is not None:
            raise SystemExit("loadgen ended before sending")
        time.sleep(0.05)
    under, took = backup(base)
    still_sending = sender.poll() is None
    row(f"under ingest (+{more} events)", under, took)
    if sender.wait() != 0:
        raise SystemExit("loadgen failed")
    if not still_sending:
        compare.log("warning: the extra events were all sent before the third backup ended")
    last, took = backup(base)
    row("after it", last, took)

    out, verify_took = toplog("backup", "verify", str(location))
    compare.log(out.strip())
    restored = work / "restored"
    out, restore_took = toplog("restore", "--from", str(location), "--data-dir", str(restored))
    compare.log(out.strip())
    total = count(base)
    compare.stop(server, work, "node")
    copy, copy_base, _, ready = compare.start_toplog(work, "restored", fresh=False)
    held = count(copy_base)
    compare.stop(copy, work, "restored")
    if held != total:
        raise SystemExit(f"the restored node holds {held} events, the original {total}")

    print(f"\n{args.events} events over {args.days} days; data dir {compare.dir_bytes(data) / 2**20:.1f} MiB\n")
    print("| step | seconds | files | bytes | files copied | bytes copied | log index |")
    print("|---|---|---|---|---|---|---|")
    for name, took, files, size, cfiles, cbytes, index in rows:
        print(f"| {name} | {took:.2f} | {files} | {size:,} | {cfiles} | {cbytes:,} | {index} |")
    print(f"| verify every backup | {verify_took:.2f} | | | | | |")
    print(f"| restore the last | {restore_took:.2f} | | | | | |")
    print(f"| start the restored node, until ready | {ready:.2f} | | | | | |")
    print(f"\nthe restored node holds {held:,} events, as the original did")


if __name__ == "__main__":
    main()
