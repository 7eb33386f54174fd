#!/usr/bin/env python3
"""A small JSON API in three variants for replay tests. Logs every request it gets
(arrival time, method, path, headers) as JSON lines.

Usage: app_server.py <bind-addr> <port> <production|baseline|candidate> <log-file>
Known differences of `candidate` from `production`:
  GET /api/user     JSON field $.plan changes ("pro" -> "free")
  GET /api/status   status 200 -> 500
  GET /api/slow     answers 300 ms later
  GET /api/headers  header X-Version 1 -> 2
Every variant puts the current time in $.generated_at of /api/user (noise that a
baseline copy of production also shows). Prints "ready".
"""
import http.server, json, sys, threading, time

addr, port, variant, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
lock = threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self):
        with lock, open(log_path, "a") as f:
            f.write(json.dumps({"t": time.time(), "method": self.command, "path": self.path,
                                "headers": {k.lower(): v for k, v in self.headers.items()}}) + "\n")

    def reply(self, status, body, ctype="application/json", extra=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self):
        self.record()
        cand = variant == "candidate"
        path = self.path.split("?")[0]
        if path == "/api/user":
            self.reply(200, {"id": 1, "name": "Ada", "plan": "free" if cand else "pro",
                             "generated_at": time.time(), "tags": ["a", "b"]})
        elif path == "/api/status":
            self.reply(500 if cand else 200, {"ok": True})
        elif path == "/api/slow":
            time.sleep(0.3 if cand else 0.01)
            self.reply(200, {"slow": True})
        elif path == "/api/headers":
            self.reply(200, {"h": 1}, extra=[("X-Version", "2" if cand else "1")])
        else:
            self.reply(200, b"static page\nline two\n", ctype="text/plain")

    do_HEAD = do_GET

    def do_POST(self):
        self.record()
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        self.reply(201, {"created": True})

srv = http.server.ThreadingHTTPServer((addr, port), Handler)
print("ready", flush=True)
srv.serve_forever()
