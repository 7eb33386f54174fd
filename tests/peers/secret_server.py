#!/usr/bin/env python3
"""HTTP/1.1 server for the redaction test. Logs every request (method, target,
headers, body) as a JSON line and answers 200:
  a JSON body  -> the same JSON echoed back (application/json)
  anything else -> "ok" (text/plain)
Each response carries `Set-Cookie: sid=<the request's sid cookie>; Path=/; HttpOnly`
when the request sent one (so equal secrets appear in requests and responses).
Usage: secret_server.py <bind-addr> <port> <log-file>; prints "ready".
"""
import http.server, json, socket, socketserver, sys, threading

addr, port, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if length else b""
        with lock, open(log_path, "a") as f:
            f.write(json.dumps({"method": self.command, "target": self.path,
                                "headers": {k.lower(): v for k, v in self.headers.items()},
                                "body": body.decode("utf-8", "replace")}) + "\n")
        if self.headers.get("Content-Type", "").startswith("application/json"):
            out, ctype = json.dumps(json.loads(body)).encode(), "application/json"
        else:
            out, ctype = b"ok", "text/plain"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(out)))
        sid = [c.split("=", 1)[1] for c in self.headers.get("Cookie", "").split("; ") if c.startswith("sid=")]
        if sid:
            self.send_header("Set-Cookie", "sid=%s; Path=/; HttpOnly" % sid[0])
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = handle_any

class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's bind does no reverse DNS lookup (http.server's does).
    address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET

server = Server((addr, port), Handler)
print("ready", flush=True)
server.serve_forever()
