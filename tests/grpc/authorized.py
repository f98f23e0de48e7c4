"""A gRPC channel that shows the node's API key (TOPLOG_API_KEY) on every
call, as `authorization: Bearer tlk_...`; for the test clients."""
import os

import grpc


class _Authorized(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor,
                  grpc.UnaryStreamClientInterceptor, grpc.StreamUnaryClientInterceptor):
    """Adds the node's API key (TOPLOG_API_KEY) to every call."""

    def _with_key(self, details):
        metadata = list(details.metadata or []) + [("authorization", "Bearer " + os.environ["TOPLOG_API_KEY"])]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)

    def intercept_unary_unary(self, cont, details, request):
        return cont(self._with_key(details), request)

    def intercept_stream_stream(self, cont, details, requests):
        return cont(self._with_key(details), requests)

    def intercept_unary_stream(self, cont, details, request):
        return cont(self._with_key(details), request)

    def intercept_stream_unary(self, cont, details, requests):
        return cont(self._with_key(details), requests)

class _Details(grpc.ClientCallDetails):
    def __init__(self, d, metadata):
        self.method, self.timeout, self.metadata = d.method, d.timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = d.credentials, d.wait_for_ready, d.compression


def authorized(channel):
    return grpc.intercept_channel(channel, _Authorized())
