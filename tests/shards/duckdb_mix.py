#!/usr/bin/env python3
"""The comparison mix's answers from a sharded cluster against DuckDB's.

    python3 tests/shards/duckdb_mix.py EVENTS.ndjson QUERIES.json

EVENTS.ndjson holds every event the cluster stores (`timestamp` in epoch
milliseconds); QUERIES.json a list of the mix's queries as benches/compare.py
shapes them, each with toplog's `answer`. DuckDB loads the events and answers
each query with compare.py's SQL; compare.py's `agreement` judges toplog's
answer against it. Prints one line of JSON: the agreement of each query.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benches"))
import compare  # noqa: E402
import duckdb  # noqa: E402


def main():
    events, queries = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE requests AS SELECT request_id, make_timestamp(timestamp * 1000) AS timestamp, "
        "user_id, endpoint, method, status_code, latency_ms "
        f"FROM read_json({compare.sql_literal(events)}, format = 'newline_delimited', columns = "
        "{'request_id': 'VARCHAR', 'timestamp': 'BIGINT', 'user_id': 'VARCHAR', 'endpoint': 'VARCHAR', "
        "'method': 'VARCHAR', 'status_code': 'USMALLINT', 'latency_ms': 'DOUBLE'})"
    )
    out = []
    for q in queries:
        ref = [list(r) for r in con.execute(compare.raw_sql(q, "duckdb")).fetchall()]
        out.append(compare.agreement(q, compare.toplog_rows(q), ref))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
