#!/usr/bin/env bash
# Peak memory of each member of a 3-node Raft cluster on this machine while
# it ingests: `loadgen send` (NDJSON, 4 connections, 10,000 events per
# request) to the leader, then each node's VmHWM and VmRSS from /proc.
#
#   bash benches/cluster_memory.sh <release toplog> <release loadgen> [events] [extra serve flags...]
#
# Only loopback traffic; nodes and data live in a temporary directory.
set -euo pipefail
TOPLOG=${1:?release toplog binary}
LOADGEN=${2:?release loadgen binary}
EVENTS=${3:-3000000}
shift 3 || true
WORK=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
. "$(dirname "$0")/cluster_lib.sh"
python3 -c 'import secrets; print(secrets.token_hex(16))' >"$WORK/secret"

ports=($(port) $(port) $(port))
spec="1=http://127.0.0.1:${ports[0]},2=http://127.0.0.1:${ports[1]},3=http://127.0.0.1:${ports[2]}"
pids=()
for id in 1 2 3; do
  "$TOPLOG" serve --node-id $id --cluster "$spec" --cluster-secret-file "$WORK/secret" \
    --listen "127.0.0.1:${ports[$((id-1))]}" --data-dir "$WORK/node-$id" "$@" 2>/dev/null &
  pids+=($!)
done
for id in 1 2 3; do ready "${ports[$((id-1))]}"; done
leader=$(leader_of "${ports[0]}")
TOPLOG_API_KEY=$KEY "$LOADGEN" send --server "http://127.0.0.1:${ports[$((leader-1))]}" \
  --events "$EVENTS" --days 1 --repeat 0 --probes 0 | grep '^ingest'
for id in 1 2 3; do
  role=follower; [ "$id" = "$leader" ] && role=leader
  mem=$(awk '/VmHWM|VmRSS/ {printf "%s %d MiB  ", $1, $2/1024}' "/proc/${pids[$((id-1))]}/status")
  echo "node $id ($role): $mem"
done
