#!/usr/bin/env bash
# A snapshot sent to a wiped follower of a 3-node Raft cluster on this
# machine: how fast it goes, and what it does to ingest on the leader.
#
#   1. three nodes (`--raft-log-keep 100`), `EVENTS` events loaded through
#      the leader (`loadgen send`, NDJSON, 4 connections, 10,000 per request);
#   2. baseline: `loadgen send` of `PROBE` events in 1,000-event requests to
#      the leader, all three nodes up: ack p50 / p99;
#   3. a follower killed with kill -9; 200,000 more events; the same with
#      two nodes up;
#   4. the same while the follower restarts and catches up from the log
#      (what it missed is within the log kept);
#   5. the follower killed again and its data directory wiped, 200,000 more
#      events; the same again while it restarts and is sent a snapshot of
#      everything: ack p50 / p99, and the snapshot's size and transfer time
#      as the follower logs them ("snapshot received").
#
#   bash benches/cluster_snapshot.sh <release toplog> <release loadgen> [events] [probe events]
#
# Only loopback traffic; nodes and data live in a temporary directory.
set -euo pipefail
TOPLOG=${1:?release toplog binary}
LOADGEN=${2:?release loadgen binary}
EVENTS=${3:-2000000}
PROBE=${4:-300000}
WORK=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
. "$(dirname "$0")/cluster_lib.sh"
send() { TOPLOG_API_KEY=$KEY "$LOADGEN" send --server "http://127.0.0.1:$1" --events "$2" --days 1 --seed "$3" --batch "$4" --probes 0 --repeat 0 | grep '^ingest'; }
python3 -c 'import secrets; print(secrets.token_hex(16))' >"$WORK/secret"

ports=($(port) $(port) $(port))
spec="1=http://127.0.0.1:${ports[0]},2=http://127.0.0.1:${ports[1]},3=http://127.0.0.1:${ports[2]}"
pids=(0 0 0)
start_node() {
  local id=$1
  TOPLOG_LOG=info "$TOPLOG" serve --node-id "$id" --cluster "$spec" --cluster-secret-file "$WORK/secret" \
    --raft-log-keep 100 --listen "127.0.0.1:${ports[$((id-1))]}" --data-dir "$WORK/node$id" \
    2>>"$WORK/node$id.log" &
  pids[$((id-1))]=$!
}
for id in 1 2 3; do start_node $id; done
for id in 1 2 3; do ready "${ports[$((id-1))]}"; done
leader=$(leader_of "${ports[0]}")
lport=${ports[$((leader-1))]}
echo "== $EVENTS events through the leader (node $leader)"
send "$lport" "$EVENTS" 1 10000
wiped=$(( leader % 3 + 1 ))
probe_while_restarting() {
  send "$lport" "$PROBE" "$1" 1000 >"$WORK/during.txt" &
  local sender=$!
  sleep 1
  start_node "$wiped"
  wait "$sender"
  cat "$WORK/during.txt"
}
echo "== baseline: $PROBE events in 1,000-event requests, all three nodes up"
send "$lport" "$PROBE" 7 1000
echo "== node $wiped killed; 200,000 more events"
kill -9 "${pids[$((wiped-1))]}"; wait "${pids[$((wiped-1))]}" 2>/dev/null || true
send "$lport" 200000 2 10000
echo "== the same, two nodes up"
send "$lport" "$PROBE" 3 1000
echo "== the same while node $wiped restarts and catches up from the log"
probe_while_restarting 4
echo "== node $wiped killed and wiped; 200,000 more events"
kill -9 "${pids[$((wiped-1))]}"; wait "${pids[$((wiped-1))]}" 2>/dev/null || true
rm -rf "$WORK/node$wiped"
send "$lport" 200000 5 10000
echo "== the same while node $wiped restarts and is sent a snapshot"
probe_while_restarting 6
for _ in $(seq 300); do grep -q "snapshot installed" "$WORK/node$wiped.log" && break; sleep 0.1; done
grep -h "snapshot offered" "$WORK"/node*.log | tail -1 | sed 's/.*INFO //'
grep -h "snapshot received" "$WORK/node$wiped.log" | tail -1 | sed 's/.*INFO //'
python3 - "$WORK/node$wiped.log" <<'PY'
import re, sys
line = [l for l in open(sys.argv[1]) if "snapshot received" in l][-1]
b = int(re.search(r"bytes=(\d+)", line).group(1))
s = float(re.search(r"seconds=([\d.]+)", line).group(1))
print(f"snapshot: {b/1e6:.1f} MB in {s:.2f} s = {b/1e6/s:.0f} MB/s")
PY
