#!/usr/bin/env python3
"""Calls every RPC of toplog.v1.Toplog with a client made by grpcio-tools
from proto/toplog/v1/toplog.proto (not toplog's own code), and server
reflection with a raw call; prints what each answered as one JSON object.

    every_rpc.py HOST:PORT PROTO_ROOT
"""
import json
import os
import sys
import tempfile
import time

import grpc

from authorized import authorized
from grpc_tools import protoc



def main():
    target, root = sys.argv[1], sys.argv[2]
    out = tempfile.mkdtemp()
    assert protoc.main(["protoc", f"-I{root}", f"--python_out={out}", f"--grpc_python_out={out}",
                        os.path.join(root, "toplog/v1/toplog.proto")]) == 0
    sys.path.insert(0, out)
    from toplog.v1 import toplog_pb2 as pb, toplog_pb2_grpc as rpc

    channel = authorized(grpc.insecure_channel(target))
    api = rpc.ToplogStub(channel)
    now_us = time.time_ns() // 1000
    def event(i, status=200):
        return pb.Event(request_id=f"g{i}", timestamp_us=now_us - 60_000_000 + i,
                        user_id=f"u{i % 3}", endpoint=["GET /a", "POST /b/{id}"][i % 2],
                        status_code=status, latency_ms=1.5 + i)
    seen = {}
    r = api.Ingest(pb.IngestRequest(events=[event(i) for i in range(5)], idempotency_key="k-1"))
    seen["ingest"] = [r.accepted, r.replayed]
    r = api.Ingest(pb.IngestRequest(events=[event(i) for i in range(5)], idempotency_key="k-1"))
    seen["ingest_again"] = [r.accepted, r.replayed]
    try:
        api.Ingest(pb.IngestRequest(events=[event(100), event(101, status=99)]))
        seen["bad"] = "answered"
    except grpc.RpcError as e:
        details = dict(e.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
        seen["bad"] = [e.code().name, b"events[1].status_code" in details]
    replies = api.IngestStream(iter([pb.IngestRequest(events=[event(10 + b * 3 + i) for i in range(3)])
                                     for b in range(4)]))
    seen["stream"] = [r.accepted for r in replies]
    top = api.TopK(pb.TopKRequest(k=5, metric="frequency", by="endpoint",
                                  range=pb.TimeRange(start_us=now_us - 3_600_000_000)))
    seen["top_k"] = [[row.key, row.count] for row in top.rows] + [top.exact]
    try:
        api.TopK(pb.TopKRequest(k=5, metric="no_such_metric"))
        seen["top_k_bad"] = "answered"
    except grpc.RpcError as e:
        details = dict(e.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
        seen["top_k_bad"] = [e.code().name, b"metric" in details]
    series = api.Timeseries(pb.TimeseriesRequest(metric="frequency", interval="1h", by="endpoint",
                                                 range=pb.TimeRange(start_us=now_us - 7_200_000_000)))
    seen["timeseries"] = sorted([s.key, sum(p.count for p in s.points)] for s in series.series)
    today = time.strftime("%Y-%m-%d", time.gmtime((now_us - 60_000_000) // 1_000_000))
    days = api.History(pb.HistoryRequest(start_date=today, end_date=today)).days
    seen["history"] = [[d.date, d.total_requests] for d in days]
    try:
        api.History(pb.HistoryRequest(start_date=today, end_date="2000-01-01"))
        seen["history_bad"] = "answered"
    except grpc.RpcError as e:
        details = dict(e.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
        seen["history_bad"] = [e.code().name, b"end_date" in details]
    seen["count"] = api.Count(pb.CountRequest(filters=pb.Filters(user_id="u1"),
                                             range=pb.TimeRange(start_us=0))).count
    ids, cursor = [], ""
    while True:
        page = api.ListRequests(pb.ListRequestsRequest(limit=4, cursor=cursor,
                                                       range=pb.TimeRange(start_us=0)))
        ids += [e.request_id for e in page.events]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    seen["list"] = ids
    # A background aggregation: submitted, polled until done, listed.
    job = api.SubmitAggregation(pb.SubmitAggregationRequest(
        start_us=now_us - 3_600_000_000, end_us=now_us + 60_000_000,
        metrics=["frequency", "latency"], group_by="endpoint", filters=pb.Filters(method="GET")))
    for _ in range(400):
        got = api.GetAggregation(pb.GetAggregationRequest(aggregation_id=job.aggregation_id))
        if got.state in ("done", "failed"):
            break
        time.sleep(0.05)
    seen["aggregation"] = [got.state, got.request.group_by, list(got.request.metrics),
                           got.request.filters.method, got.finished_at_us >= got.submitted_at_us > 0,
                           [[r.group, r.values["frequency"], sorted(r.values), r.exact] for r in got.rows]]
    listed = api.ListAggregations(pb.ListAggregationsRequest()).aggregations
    seen["aggregations_listed"] = [[a.aggregation_id == job.aggregation_id, a.state, len(a.rows)] for a in listed]
    def refused(call, request, field):
        try:
            call(request)
            return "answered"
        except grpc.RpcError as e:
            details = dict(e.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
            return [e.code().name, field.encode() in details]
    seen["aggregation_bad"] = [
        refused(api.SubmitAggregation, pb.SubmitAggregationRequest(
            start_us=now_us, end_us=now_us - 1, metrics=["frequency"]), "start_us"),
        refused(api.SubmitAggregation, pb.SubmitAggregationRequest(
            start_us=now_us - 1, end_us=now_us, metrics=["no_such_metric"]), "metrics"),
        refused(api.GetAggregation, pb.GetAggregationRequest(aggregation_id="no-such-job"), ""),
    ]
    # Server reflection (grpc.reflection.v1): list_services, field 7.
    reflect = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                    request_serializer=lambda b: b, response_deserializer=lambda b: b)
    answer = b"".join(reflect(iter([b"\x3a\x00"])))
    seen["reflection"] = [name for name in ["toplog.v1.Toplog", "grpc.health.v1.Health"]
                          if name.encode() in answer]
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
