"""A counting HTTP proxy in front of the local S3 store: logs one JSON line per request (method, path, query,
Range, status, bytes) so a check can count GETs per shard. Host header passed through unchanged (SigV4 signs it).
usage: python s3proxy.py PORT UPSTREAM_URL LOGFILE
"""
import http.client, json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

PORT, UP, LOG = int(sys.argv[1]), urlsplit(sys.argv[2]), sys.argv[3]
lock = threading.Lock()


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _do(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        c = http.client.HTTPConnection(UP.hostname, UP.port, timeout=60)
        hdrs = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
        c.request(self.command, self.path, body=body, headers=hdrs)
        r = c.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        # HEAD: pass the object's size through (clients take the file size from it)
        self.send_header("Content-Length", r.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        path, _, query = self.path.partition("?")
        with lock, open(LOG, "a") as f:
            f.write(json.dumps({"m": self.command, "path": path, "q": query[:80], "range": self.headers.get("Range"),
                                "status": r.status, "bytes": len(data)}) + "\n")
        c.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _do

    def log_message(self, *a):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
