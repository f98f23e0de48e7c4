#!/usr/bin/env python3
"""Calls every method of toplog.v1.Toplog (from the .proto), OTLP's trace
Export and the health check once per caller, with an empty message, and
prints the status code name each got, as JSON: {method: {caller: code}}.

    each_caller.py HOST:PORT PROTO_ROOT '{"caller": "tlk_..." or null, ...}'
"""
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc


def main():
    target, root, callers = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    out = tempfile.mkdtemp()
    assert protoc.main(["protoc", f"-I{root}", f"--python_out={out}",
                        os.path.join(root, "toplog/v1/toplog.proto")]) == 0
    sys.path.insert(0, out)
    from toplog.v1 import toplog_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Toplog"]
    methods = [(f"/toplog.v1.Toplog/{m.name}", m.client_streaming, m.server_streaming)
               for m in service.methods]
    methods += [("/opentelemetry.proto.collector.trace.v1.TraceService/Export", False, False),
                ("/grpc.health.v1.Health/Check", False, False)]
    channel = grpc.insecure_channel(target)
    seen = {}
    for path, client_streaming, server_streaming in methods:
        seen[path] = {}
        for caller, key in callers.items():
            metadata = [("authorization", f"Bearer {key}")] if key else []
            ident = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
            try:
                if client_streaming:
                    call = channel.stream_stream(path, **ident)
                    list(call(iter([b""]), timeout=10, metadata=metadata))
                elif server_streaming:
                    list(channel.unary_stream(path, **ident)(b"", timeout=10, metadata=metadata))
                else:
                    channel.unary_unary(path, **ident)(b"", timeout=10, metadata=metadata)
                seen[path][caller] = "OK"
            except grpc.RpcError as e:
                seen[path][caller] = e.code().name
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
