#!/usr/bin/env python3
"""Sends spans to a toplog node with the OpenTelemetry Python SDK and one of
its OTLP exporters (HTTP with protobuf, or gRPC), then prints, as one JSON
array, the events the node should store: one per SERVER span with a method
and a status, in the form `GET /api/v1/requests` lists them.

    send_spans.py BASE_URL SPANS none|gzip http|grpc
"""
import datetime
import json
import os
import sys
import time

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind


def rfc3339(us):
    whole = datetime.datetime.fromtimestamp(us // 1_000_000, tz=datetime.timezone.utc)
    return whole.strftime("%Y-%m-%dT%H:%M:%S") + f".{us % 1_000_000:06d}Z"


def main():
    base, n, compression, transport = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    # The node's API key, as a collector or SDK would send it.
    auth = {"authorization": "Bearer " + os.environ["TOPLOG_API_KEY"]}
    if transport == "grpc":
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        exporter = OTLPSpanExporter(
            endpoint=base.removeprefix("http://"),
            insecure=True,
            headers=auth,
            compression=grpc.Compression.Gzip if compression == "gzip" else grpc.Compression.NoCompression,
        )
    else:
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        exporter = OTLPSpanExporter(
            endpoint=base + "/v1/traces",
            headers=auth,
            compression=Compression.Gzip if compression == "gzip" else Compression.NoCompression,
        )
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=64))
    tracer = provider.get_tracer("toplog-test")
    now = time.time_ns()
    expected = []
    for i in range(n):
        start = now - 5_000_000_000 + i * 1_000_003
        end = start + 1_000_000 * (1 + i % 40) + 777
        status = [200, 200, 201, 404, 500, 503][i % 6]
        if i % 2 == 0:
            # Current semantic conventions.
            method, route = ["GET", "POST"][i % 4 // 2], f"/items/{{id}}/v{i % 3}"
            attrs = {
                "http.request.method": method,
                "http.route": route,
                "http.response.status_code": status,
                "enduser.id": f"user-{i % 7}",
            }
            user = f"user-{i % 7}"
        else:
            # The older names, with a raw path to template.
            method, route = "PUT", "/orders/{id}/lines/{id}"
            attrs = {
                "http.method": method,
                "http.target": f"/orders/{1000 + i}/lines/{i % 5}?force=1",
                "http.status_code": status,
            }
            user = ""
        span = tracer.start_span(f"span {i}", kind=SpanKind.SERVER, start_time=start, attributes=attrs)
        ctx = span.get_span_context()
        span.end(end_time=end)
        expected.append({
            "request_id": f"{ctx.trace_id:032x}-{ctx.span_id:016x}",
            "timestamp": rfc3339(start // 1000),
            "user_id": user,
            "endpoint": f"{method} {route}",
            "method": method,
            "status_code": status,
            "latency_ms": ((end - start) // 1000) / 1000,
        })
    # Not requests this service served: skipped.
    tracer.start_span("call out", kind=SpanKind.CLIENT,
                      attributes={"http.request.method": "GET", "http.response.status_code": 200}).end()
    tracer.start_span("work", kind=SpanKind.INTERNAL).end()
    # A server span without a status: rejected, never guessed.
    tracer.start_span("no status", kind=SpanKind.SERVER,
                      attributes={"http.request.method": "GET", "http.route": "/x"}).end()
    provider.force_flush()
    provider.shutdown()
    print(json.dumps(expected))


if __name__ == "__main__":
    main()
