#!/usr/bin/env python3
"""Sends batches to toplog.v1.Toplog with grpcio (stubs made from the .proto).

    stream_batches.py HOST:PORT PROTO_ROOT stream BATCHES SIZE
        one IngestStream; prints each acknowledged batch's number as it
        comes, until the stream ends or breaks
    stream_batches.py HOST:PORT PROTO_ROOT resend BATCHES SIZE
        every batch again with unary Ingest and the same keys; prints, per
        batch, "<n> <accepted> <replayed>"

Batch n holds events b<n>-0 ... b<n>-<SIZE-1> under the idempotency key s-<n>;
the same n always gives the same batch.
"""
import os
import sys
import tempfile

import grpc

from authorized import authorized
from grpc_tools import protoc



def main():
    target, root, mode, batches, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    out = tempfile.mkdtemp()
    assert protoc.main(["protoc", f"-I{root}", f"--python_out={out}", f"--grpc_python_out={out}",
                        os.path.join(root, "toplog/v1/toplog.proto")]) == 0
    sys.path.insert(0, out)
    from toplog.v1 import toplog_pb2 as pb, toplog_pb2_grpc as rpc

    base_us = int(os.environ["BASE_US"])

    def batch(n):
        return pb.IngestRequest(
            idempotency_key=f"s-{n}",
            events=[pb.Event(request_id=f"b{n}-{i}", timestamp_us=base_us + n * size + i,
                             user_id=f"u{i % 10}", endpoint="GET /stream", status_code=200,
                             latency_ms=1.0) for i in range(size)])

    api = rpc.ToplogStub(authorized(grpc.insecure_channel(target)))
    if mode == "stream":
        try:
            for n, reply in enumerate(api.IngestStream(batch(n) for n in range(batches))):
                assert reply.accepted == size
                print(n, flush=True)
        except grpc.RpcError as e:
            print(f"broken {e.code().name}", flush=True)
    else:
        for n in range(batches):
            reply = api.Ingest(batch(n), timeout=60)
            print(n, reply.accepted, int(reply.replayed), flush=True)


if __name__ == "__main__":
    main()
