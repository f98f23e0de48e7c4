#!/usr/bin/env bash
# Ingest into a 3-node Raft cluster on this machine beside a single node:
# `loadgen send` (NDJSON, 4 connections, 10,000 events per request) to the
# leader, then the time to elect a new leader after the leader is killed
# with kill -9. Runs alternate, single node first. All three nodes of the
# cluster share this machine's 2 cores and one disk.
#
#   bash benches/cluster_ingest.sh <release toplog> <release loadgen> [events] [runs]
#
# Only loopback traffic; nodes and data live in a temporary directory.
set -euo pipefail
TOPLOG=${1:?release toplog binary}
LOADGEN=${2:?release loadgen binary}
EVENTS=${3:-1000000}
RUNS=${4:-2}
WORK=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
. "$(dirname "$0")/cluster_lib.sh"
python3 -c 'import secrets; print(secrets.token_hex(16))' >"$WORK/secret"

for run in $(seq "$RUNS"); do
  echo "== run $run, single node"
  p=$(port)
  "$TOPLOG" serve --listen "127.0.0.1:$p" --data-dir "$WORK/single-$run" 2>/dev/null &
  single=$!
  ready "$p"
  TOPLOG_API_KEY=$KEY "$LOADGEN" send --server "http://127.0.0.1:$p" --events "$EVENTS" --days 1 | grep '^ingest'
  kill -TERM $single; wait $single || true

  echo "== run $run, 3-node cluster"
  ports=($(port) $(port) $(port))
  spec="1=http://127.0.0.1:${ports[0]},2=http://127.0.0.1:${ports[1]},3=http://127.0.0.1:${ports[2]}"
  pids=()
  for id in 1 2 3; do
    "$TOPLOG" serve --node-id $id --cluster "$spec" --cluster-secret-file "$WORK/secret" \
      --listen "127.0.0.1:${ports[$((id-1))]}" --data-dir "$WORK/cluster-$run-$id" 2>/dev/null &
    pids+=($!)
  done
  for id in 1 2 3; do ready "${ports[$((id-1))]}"; done
  leader=$(leader_of "${ports[0]}")
  TOPLOG_API_KEY=$KEY "$LOADGEN" send --server "http://127.0.0.1:${ports[$((leader-1))]}" --events "$EVENTS" --days 1 | grep '^ingest'
  # Election after the leader dies.
  kill -9 "${pids[$((leader-1))]}"
  start=$(date +%s%N)
  other=$(( leader % 3 + 1 ))
  while :; do
    now=$(leader_of "${ports[$((other-1))]}")
    if [ "$now" != 0 ] && [ "$now" != "$leader" ]; then break; fi
    sleep 0.02
  done
  echo "new leader (node $now) $(( ($(date +%s%N) - start) / 1000000 )) ms after kill -9 of node $leader"
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
done
