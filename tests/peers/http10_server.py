#!/usr/bin/env python3
"""python http.server answering HTTP/1.0 without Content-Length: the response ends
when the server closes the connection (close-delimited).
Usage: http10_server.py <bind-addr> <port>; prints "ready"."""
import http.server, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()  # no Content-Length: the body runs until close
        n = int(self.path.rsplit("/", 1)[-1]) if self.path.rsplit("/", 1)[-1].isdigit() else 11
        self.wfile.write((b"0123456789abcdef" * (n // 16 + 1))[:n])
    def log_message(self, *args):
        pass

srv = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler)
print("ready", flush=True)
srv.serve_forever()
