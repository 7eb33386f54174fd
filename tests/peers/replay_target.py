#!/usr/bin/env python3
"""Servers for the replay tests: production and candidates that behave in known ways,
and targets that misbehave. Every request (or accepted connection) is logged as a JSON
line, so a test counts exactly what reached the server.

Usage: replay_target.py <bind-addr> <port> <mode> <log-file>
Modes:
  production, candidate  HTTP/1.1 keep-alive:
      GET /big          3,000,000 bytes (application/octet-stream); the candidate's
                        differs from production's at byte 1,500,000
      GET /bytes/<n>    n bytes of a fixed pattern (same on both)
      GET /wait-<ms>    waits <ms> milliseconds, then answers {"waited": ms}
      POST /upload      reads the body, answers {"len": n, "sha256": hex}
      anything else     {"ok": true}
  stall                 accepts connections and never reads from them
  silent                reads each request (head and Content-Length body), never answers
Log lines: {"t": time, "event": "request"|"accept", "method", "path", "headers",
"len", "sha256"}. Prints "ready" once listening.
"""
import hashlib, http.server, json, socket, socketserver, sys, threading, time

addr, port, mode, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
lock = threading.Lock()

def log(event, **fields):
    with lock, open(log_path, "a") as f:
        f.write(json.dumps(dict(t=time.time(), event=event, **fields)) + "\n")

def pattern(n):
    block = bytes(range(256)) * 64
    return (block * (n // len(block) + 1))[:n]

BIG = pattern(3_000_000)
CANDIDATE_BIG = BIG[:1_500_000] + bytes([BIG[1_500_000] ^ 0xff]) + BIG[1_500_001:]

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self):
        headers = {k.lower(): v for k, v in self.headers.items()}
        log("request", method=self.command, path=self.path, headers=headers, len=0, sha256=None)
        path = self.path.split("?")[0]
        if path == "/big":
            self.reply(200, CANDIDATE_BIG if mode == "candidate" else BIG, "application/octet-stream")
        elif path.startswith("/bytes/"):
            self.reply(200, pattern(int(path.split("/")[2])), "application/octet-stream")
        elif path.startswith("/wait-"):
            ms = int(path[len("/wait-"):])
            time.sleep(ms / 1000)
            self.reply(200, {"waited": ms})
        else:
            self.reply(200, {"ok": True})

    do_HEAD = do_GET

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        digest = hashlib.sha256(body).hexdigest()
        headers = {k.lower(): v for k, v in self.headers.items()}
        log("request", method="POST", path=self.path, headers=headers, len=len(body), sha256=digest)
        self.reply(200, {"len": len(body), "sha256": digest})

def stall():
    srv = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # A small receive buffer, so a large request fills it soon.
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    srv.bind((addr, port)); srv.listen(64)
    print("ready", flush=True)
    held = []
    while True:
        sock, peer = srv.accept()
        log("accept", method=None, path=None, headers={}, len=0, sha256=None)
        held.append(sock)

class Silent(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = self.rfile.readline()
                if not line:
                    return
                head += line
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            n = 0
            for l in lines[1:]:
                if l.lower().startswith("content-length:"):
                    n = int(l.split(":", 1)[1])
            self.rfile.read(n)
            log("request", method=method, path=path, headers={}, len=n, sha256=None)

class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

class HttpServer(http.server.ThreadingHTTPServer):
    # server_bind of HTTPServer looks up the host name (slow without DNS).
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = addr, port

if mode == "stall":
    stall()
elif mode == "silent":
    srv = Server((addr, port), Silent)
    print("ready", flush=True)
    srv.serve_forever()
else:
    srv = HttpServer((addr, port), Handler)
    print("ready", flush=True)
    srv.serve_forever()
