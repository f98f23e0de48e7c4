#!/usr/bin/env bash
# Ingest into a 3-node cluster of 1, 2 and 4 shards on this machine:
# `loadgen send` (NDJSON, 4 connections, 10,000 events per request) to node
# 1, which splits each batch by shard and writes the parts through each
# shard's Raft group. Prints events/s, each node's CPU microseconds per
# event, and each shard's serial CPU (its Raft thread, `raft-g<n>`: its log
# and applying it on that node) per event of that shard, so the capacity
# model in docs/cluster.md can be checked. Runs alternate; every node of
# every cluster shares this machine's cores and disk.
#
#   bash benches/shards.sh <release toplog> <release loadgen> [events] [runs]
#
# With REPEAT=n, loadgen then runs its query mix n times against node 1
# (which reads the shards it holds and merges them) and prints each
# query's latency, over HTTP and inside the node.
#
# Only loopback traffic; nodes and data live in a temporary directory.
set -euo pipefail
TOPLOG=${1:?release toplog binary}
LOADGEN=${2:?release loadgen binary}
EVENTS=${3:-2000000}
RUNS=${4:-2}
WORK=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
. "$(dirname "$0")/cluster_lib.sh"
python3 -c 'import secrets; print(secrets.token_hex(16))' >"$WORK/secret"
TICK=$(getconf CLK_TCK)

# CPU seconds of process $1, and of each of its threads named raft-g<n>
# (n > 0: a shard's group), as "total g1=... g2=...".
cpu() {
  python3 - "$1" "$TICK" <<'PY'
import os, sys
pid, tick = sys.argv[1], int(sys.argv[2])
def secs(stat):
    f = stat.rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
total = secs(open(f"/proc/{pid}/stat").read())
groups = {}
for t in os.listdir(f"/proc/{pid}/task"):
    try:
        name = open(f"/proc/{pid}/task/{t}/comm").read().strip()
        s = secs(open(f"/proc/{pid}/task/{t}/stat").read())
    except OSError:
        continue
    if name.startswith("raft-g"):
        groups[name[6:]] = groups.get(name[6:], 0) + s
print(total, " ".join(f"{g}={v:.3f}" for g, v in sorted(groups.items())))
PY
}

for run in $(seq "$RUNS"); do
  for shards in 1 2 4; do
    echo "== run $run, 3 nodes, $shards shard(s)"
    ports=($(port) $(port) $(port))
    spec="1=http://127.0.0.1:${ports[0]},2=http://127.0.0.1:${ports[1]},3=http://127.0.0.1:${ports[2]}"
    pids=()
    for id in 1 2 3; do
      "$TOPLOG" serve --node-id $id --cluster "$spec" --cluster-secret-file "$WORK/secret" --shards "$shards" \
        --listen "127.0.0.1:${ports[$((id-1))]}" --data-dir "$WORK/c-$run-$shards-$id" 2>/dev/null &
      pids+=($!)
    done
    for id in 1 2 3; do ready "${ports[$((id-1))]}"; done
    # Leaderships spread (one per shard per node at most) before the load.
    sleep 3
    before=(); for pid in "${pids[@]}"; do before+=("$(cpu "$pid")"); done
    TOPLOG_API_KEY=$KEY "$LOADGEN" send --server "http://127.0.0.1:${ports[0]}" --events "$EVENTS" --days 1 \
      --probes 0 --repeat "${REPEAT:-0}" | grep -E '^ingest|^\| '
    for i in 0 1 2; do
      after=$(cpu "${pids[$i]}")
      python3 - "$EVENTS" "$shards" "${before[$i]}" "$after" "$((i+1))" <<'PY'
import sys
events, shards = int(sys.argv[1]), int(sys.argv[2])
def parse(s):
    parts = s.split()
    return float(parts[0]), {k: float(v) for k, v in (p.split("=") for p in parts[1:])}
(t0, g0), (t1, g1) = parse(sys.argv[3]), parse(sys.argv[4])
# Group 0 is the metadata group; with one shard it holds the events.
per_shard = events / shards
serial = " ".join(
    f"g{g}:{(g1[g] - g0.get(g, 0)) / per_shard * 1e6:.2f}"
    for g in sorted(g1) if (g != "0") == (shards > 1)
)
print(f"node {sys.argv[5]}: {(t1 - t0) / events * 1e6:.2f} µs CPU/event; raft thread µs per event of its shard: {serial}")
PY
    done
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
  done
done
