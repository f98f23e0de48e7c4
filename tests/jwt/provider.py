#!/usr/bin/env python3
"""A stand-in identity provider for the JWT tests: two RSA key pairs made
with `cryptography`, tokens signed with PyJWT, the JWKS served over HTTP.

    provider.py   -> prints its port, then serves:
    GET /jwks.json         the current key set (key "a"; after /rotate, key "b")
    GET /rotate            publish key "b" instead of "a"
    GET /token/<case>      a token for one case (see CASES)

Tokens carry iss "https://idp.test", aud "toplog" and Keycloak-style roles
in realm_access.roles.
"""
import base64
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KEYS = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in ["a", "b"]}
STATE = {"published": "a"}
ISS, AUD = "https://idp.test", "toplog"


def jwk(kid):
    numbers = KEYS[kid].public_key().public_numbers()
    b64 = lambda n: base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(numbers.n), "e": b64(numbers.e)}


def claims(**over):
    now = int(time.time())
    c = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 300,
         "realm_access": {"roles": ["toplog-viewer"]}}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def sign(c, kid="a", alg="RS256"):
    return jwt.encode(c, KEYS[kid], algorithm=alg, headers={"kid": kid})


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def case(name):
    now = int(time.time())
    if name == "viewer":
        return sign(claims())
    if name == "writer":
        return sign(claims(realm_access={"roles": ["toplog-writer"]}))
    if name == "no_role":
        return sign(claims(realm_access={"roles": ["someone-else"]}))
    if name == "alg_none":
        header = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": "a"}).encode())
        return f"{header}.{b64url(json.dumps(claims(realm_access={'roles': ['toplog-admin']})).encode())}."
    if name == "key_confusion":
        # HS256 with the RSA public key (PEM) as the HMAC secret.
        pem = KEYS["a"].public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "a"}).encode())
        body = b64url(json.dumps(claims()).encode())
        import hashlib, hmac
        sig = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
        return f"{header}.{body}.{b64url(sig)}"
    if name == "expired":
        return sign(claims(exp=now - 3600, iat=now - 7200))
    if name == "not_yet":
        return sign(claims(nbf=now + 3600))
    if name == "no_exp":
        return sign(claims(exp=None))
    if name == "wrong_iss":
        return sign(claims(iss="https://evil.test"))
    if name == "wrong_aud":
        return sign(claims(aud="someone-else"))
    if name == "unknown_kid":
        return jwt.encode(claims(), KEYS["a"], algorithm="RS256", headers={"kid": "zzz"})
    if name == "tampered":
        header, _, sig = sign(claims()).split(".")
        body = b64url(json.dumps(claims(realm_access={"roles": ["toplog-writer"]})).encode())
        return f"{header}.{body}.{sig}"
    if name == "too_big":
        return sign(claims(padding="x" * 9000))
    if name == "rotated":
        return sign(claims(), kid="b")
    raise KeyError(name)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/jwks.json":
            body = json.dumps({"keys": [jwk(STATE["published"])]}).encode()
        elif self.path == "/rotate":
            STATE["published"] = "b"
            body = b"rotated"
        elif self.path.startswith("/token/"):
            body = case(self.path[len("/token/"):]).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
