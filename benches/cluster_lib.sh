# Helpers the cluster benchmarks share (sourced): a free port, waiting for
# a node to be ready, the leader a node names, and the admin key they use.
KEY=tlk_0000000a11ce_00000000000000000000000000000000000000ad
export TOPLOG_ADMIN_KEY=$KEY
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ready() { for _ in $(seq 600); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return; sleep 0.1; done; echo "node on $1 not ready" >&2; exit 1; }
leader_of() { curl -s -H "Authorization: Bearer $KEY" "http://127.0.0.1:$1/api/v1/cluster" | python3 -c 'import sys,json; print(json.load(sys.stdin)["data"].get("leader_id") or 0)'; }
