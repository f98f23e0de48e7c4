#!/usr/bin/env python3
"""One HTTPS (or HTTP) request with Python's own ssl module, or a gRPC
health check over a TLS channel; prints `<status> <body>` or `error <what>`.

    ask.py URL [--ca FILE] [--cert FILE --key FILE] [--post BODY] [--grpc-health] [--no-key]
"""
import argparse
import os
import ssl
import sys
import urllib.error
import urllib.request


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--ca")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--post")
    ap.add_argument("--grpc-health", action="store_true")
    ap.add_argument("--no-key", action="store_true", help="send no API key (TOPLOG_API_KEY)")
    a = ap.parse_args()
    if a.grpc_health:
        import grpc
        creds = grpc.ssl_channel_credentials(root_certificates=open(a.ca, "rb").read())
        channel = grpc.secure_channel(a.url, creds)
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            print("grpc", check(b"", timeout=10).hex())
        except grpc.RpcError as e:
            print("error", e.code().name)
        return
    context = None
    if a.url.startswith("https://"):
        context = ssl.create_default_context(cafile=a.ca)
        if a.cert:
            context.load_cert_chain(a.cert, a.key)
    data = a.post.encode() if a.post else None
    headers = {"Content-Type": "application/json"}
    if os.environ.get("TOPLOG_API_KEY") and not a.no_key:
        headers["Authorization"] = "Bearer " + os.environ["TOPLOG_API_KEY"]
    request = urllib.request.Request(a.url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as r:
            print(r.status, r.read().decode()[:300].replace("\n", " "))
    except urllib.error.HTTPError as e:
        print(e.code, e.read().decode()[:300].replace("\n", " "))
    except Exception as e:  # the kind of failure is the answer
        reason = getattr(e, "reason", e)
        print("error", type(reason).__name__, str(reason)[:200].replace("\n", " "))


if __name__ == "__main__":
    sys.exit(main())
