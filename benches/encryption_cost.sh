#!/usr/bin/env bash
# What encryption at rest costs: the same workload ingested by a node
# without and with a key file, then each node restarted and the query mix
# run once (every query's first, cold run) and then warm, and two queries
# that decode raw segments (the 10 slowest requests of 7 days, and one
# user's count over 7 days), cold and warm; and the data directory's size.
# Runs alternate, plain first.
#
#   bash benches/encryption_cost.sh <release toplog> <release loadgen> [events] [runs]
#
# Only loopback traffic; nodes and data live in a temporary directory.
set -euo pipefail
TOPLOG=${1:?release toplog binary}
LOADGEN=${2:?release loadgen binary}
EVENTS=${3:-2000000}
RUNS=${4:-2}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() { # data_dir port [extra...]
  local data=$1 port=$2; shift 2
  "$TOPLOG" serve --auth off --listen "127.0.0.1:$port" --data-dir "$data" "$@" 2>"$data.log" &
  PID=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return
    sleep 0.1
  done
  echo "node did not become ready" >&2; cat "$data.log" >&2; exit 1
}

stop() { kill -TERM "$PID"; wait "$PID" || true; }

python3 -c "import secrets; print('current = \"bench\"\n[keys]\nbench = \"' + secrets.token_hex(32) + '\"')" >"$WORK/keys.toml"
END=$(( $(date +%s) - 60 ))

for run in $(seq "$RUNS"); do
  for mode in plain encrypted; do
    data="$WORK/$mode-$run"
    extra=()
    [ "$mode" = encrypted ] && extra=(--encryption-key-file "$WORK/keys.toml")
    p=$(port)
    start "$data" "$p" "${extra[@]}"
    echo "== run $run, $mode"
    "$LOADGEN" send --server "http://127.0.0.1:$p" --events "$EVENTS" --days 7 --end "$END" | grep '^ingest'
    stop
    du -sb "$data" | awk '{printf "data dir: %.1f MB\n", $1 / 1e6}'
    start "$data" "$p" "${extra[@]}"
    from=$(( (END - 7 * 86400) * 1000 ))
    for q in "top-k?k=10&metric=latency_max&by=request&start=$from" "count?user_id=user-0000001&start=$from"; do
      for turn in cold warm warm warm; do
        curl -sf -o /dev/null -w "raw scan $turn: %{time_total} s  $q\n" "http://127.0.0.1:$p/api/v1/requests/$q"
      done
    done
    stop
    start "$data" "$p" "${extra[@]}"
    echo "-- first run after a restart"
    "$LOADGEN" query --server "http://127.0.0.1:$p" --repeat 1 --now "$END" | grep '^|'
    echo "-- warm (20 runs)"
    "$LOADGEN" query --server "http://127.0.0.1:$p" --repeat 20 --now "$END" | grep '^|'
    stop
  done
done
