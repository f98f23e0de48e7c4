#!/usr/bin/env python3
"""Dev server for toplog's web page, standard library only.

Serves server/web/ the way the node will (/ -> index.html with {{version}}
replaced by "dev", /ui/dev/app.js, /ui/dev/app.css, the same CSP) and
proxies every other path to a running node.

    python3 tests/web/dev_server.py --node http://127.0.0.1:18080 --listen 127.0.0.1:18081
"""
import argparse
import http.server
import pathlib
import urllib.error
import urllib.request

WEB = pathlib.Path(__file__).resolve().parents[2] / "server" / "web"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; "
       "img-src 'self' data:; connect-src 'self'")
ASSETS = {"/ui/dev/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/ui/dev/app.css": ("app.css", "text/css; charset=utf-8")}
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate", "host", "content-length"}


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    node = ""

    def log_message(self, fmt, *args):  # quiet; errors still go to stderr
        pass

    def send_body(self, status, ctype, body, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def serve_page(self):
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            html = (WEB / "index.html").read_text().replace("{{version}}", "dev")
            self.send_body(200, "text/html; charset=utf-8", html.encode(), [("Cache-Control", "no-cache")])
            return True
        if path in ASSETS:
            name, ctype = ASSETS[path]
            self.send_body(200, ctype, (WEB / name).read_bytes(), [("Cache-Control", "no-cache")])
            return True
        return False

    def proxy(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        req = urllib.request.Request(self.node + self.path, data=body, method=self.command)
        for k, v in self.headers.items():
            if k.lower() not in HOP:
                req.add_header(k, v)
        try:
            resp = OPENER.open(req, timeout=60)
            status, headers, data = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, headers, data = e.code, e.headers, e.read()
        except OSError as e:
            self.send_body(502, "application/json",
                           b'{"status":"error","error":{"code":"bad_gateway","message":"%s"}}' % str(e).encode())
            return
        self.send_response(status)
        for k, v in headers.items():
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def handle_any(self):
        if self.command in ("GET", "HEAD") and self.serve_page():
            return
        self.proxy()

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = handle_any


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--node", required=True, help="the node's base URL, e.g. http://127.0.0.1:18080")
    ap.add_argument("--listen", default="127.0.0.1:18081", help="address to serve on (loopback)")
    args = ap.parse_args()
    host, port = args.listen.rsplit(":", 1)
    Handler.node = args.node.rstrip("/")
    srv = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    print(f"serving server/web on http://{args.listen}, proxying to {Handler.node}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
