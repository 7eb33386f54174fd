#!/usr/bin/env python3
"""Recording HTTP/1.1 server: the ground truth for the capture tests.

Serves keep-alive HTTP/1.1 on raw sockets and, when each connection closes, appends
one JSON line to the log: client address, and length + SHA-256 of every byte received
and sent. Routes:
  GET  /bytes/<n>   -> 200 with n bytes of a deterministic pattern
  POST|PUT /...      -> reads the body (Content-Length or chunked), answers 200 "got <n>"
  anything else      -> 200 "ok"
Usage: record_server.py <bind-addr> <port> <log-file>
Prints "ready" on stdout once listening.
"""
import hashlib, json, socket, sys, threading

def pattern(n):
    block = bytes(range(256)) * 64
    out = bytearray()
    while len(out) < n:
        out += block
    return bytes(out[:n])

class Conn:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""
        self.rx, self.tx = hashlib.sha256(), hashlib.sha256()
        self.rx_len = self.tx_len = 0
    def fill(self):
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError
        self.rx.update(data); self.rx_len += len(data); self.buf += data
    def read_until(self, marker):
        while marker not in self.buf:
            self.fill()
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out
    def read_n(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out
    def send(self, data):
        self.sock.sendall(data); self.tx.update(data); self.tx_len += len(data)

def handle(sock, addr, log, lock):
    c = Conn(sock)
    try:
        while True:
            head = c.read_until(b"\r\n\r\n").decode("latin-1")
            lines = head.split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            hdrs = {}
            for l in lines[1:]:
                if ":" in l:
                    k, v = l.split(":", 1); hdrs[k.strip().lower()] = v.strip()
            if hdrs.get("expect", "").lower() == "100-continue":
                c.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            body_len = 0
            if "chunked" in hdrs.get("transfer-encoding", "").lower():
                while True:
                    size = int(c.read_until(b"\r\n").split(b";")[0].strip(), 16)
                    if size == 0:
                        while c.read_until(b"\r\n") != b"\r\n":
                            pass  # trailer fields
                        break
                    c.read_n(size); c.read_n(2); body_len += size
            elif "content-length" in hdrs:
                body_len = int(hdrs["content-length"]); c.read_n(body_len)
            if method == "GET" and target.startswith("/bytes/"):
                body = pattern(int(target.split("/")[2]))
            elif method in ("POST", "PUT"):
                body = b"got %d" % body_len
            else:
                body = b"ok"
            conn_hdr = hdrs.get("connection", "").lower()
            # HTTP/1.0 closes unless asked to keep alive (ab, python clients).
            close = conn_hdr == "close" or (version == "HTTP/1.0" and conn_hdr != "keep-alive")
            resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n%s\r\n" % (
                len(body), b"Connection: close\r\n" if close else (b"Connection: keep-alive\r\n" if version == "HTTP/1.0" else b""))
            c.send(resp + (b"" if method == "HEAD" else body))
            if close:
                break
    except (EOFError, ConnectionError, ValueError):
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass
        rec = {"client": "%s:%d" % (addr[0], addr[1]), "c2s_bytes": c.rx_len, "c2s_sha256": c.rx.hexdigest(),
               "s2c_bytes": c.tx_len, "s2c_sha256": c.tx.hexdigest()}
        with lock:
            log.write(json.dumps(rec) + "\n"); log.flush()

def main():
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv = socket.socket(fam, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port)); srv.listen(1024)
    log, lock = open(path, "a"), threading.Lock()
    print("ready", flush=True)
    while True:
        sock, addr = srv.accept()
        threading.Thread(target=handle, args=(sock, addr, log, lock), daemon=True).start()

main()
