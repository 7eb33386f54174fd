#!/usr/bin/env python3
"""HTTPS client on Python's ssl module (OpenSSL): sends each request file in turn on
ONE TLS connection, reading each response by its Content-Length, and writes the exact
plaintext it sent and received. Prints its local port.
Usage: tls_client.py <host> <port> <sent-file> <received-file> <request-file>..."""
import socket, ssl, sys
host, port, sent_path, recv_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
raw = socket.create_connection((host, port))
s = ctx.wrap_socket(raw, server_hostname="capture-test")
local_port = s.getsockname()[1]
sent, got = b"", b""

def read_response():
    global got
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("server closed early")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("server closed early")
        body += chunk
    got += head + b"\r\n\r\n" + body

for path in sys.argv[5:]:
    data = open(path, "rb").read()
    s.sendall(data)
    sent += data
    read_response()
print(local_port, flush=True)
s.close()
open(sent_path, "wb").write(sent)
open(recv_path, "wb").write(got)
