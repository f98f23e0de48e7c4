#!/usr/bin/env bash
# gRPC ingest (toplog.v1 Ingest) beside NDJSON over HTTP on the same events:
# three interleaved pairs, a fresh release node for each run.
#   bash benches/grpc_vs_ndjson.sh [EVENTS]
# Builds the release binaries first (target/release unless CARGO_TARGET_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
events="${1:-2000000}"
cargo build --release --locked -p toplog-server --bin toplog
cargo build --release --locked -p toplog-benches --bin loadgen
bin="${CARGO_TARGET_DIR:-target}/release"
for round in 1 2 3; do
  for protocol in http grpc; do
    data=$(mktemp -d)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$bin/toplog" serve --listen "127.0.0.1:$port" --data-dir "$data" --auth off >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
    "$bin/loadgen" send --server "http://127.0.0.1:$port" --events "$events" --probes 0 --repeat 1 \
      --protocol "$protocol" 2>/dev/null | grep '^ingest'
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$data"
  done
done
