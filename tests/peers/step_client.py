#!/usr/bin/env python3
"""Raw HTTP/1.1 client that pauses between a request head and its body, so a test
can let the agent act on the head first (the skip test).

Usage: step_client.py <host> <port> <head-file> <body-file> <next-request-file> <sent-out> <received-out>
Connects and sends the head, prints "head sent", waits for a line on stdin, sends the
body, reads one response, sends the next request, reads its response, writes every
byte it sent and received, prints "done" and closes.
"""
import socket, sys

host, port = sys.argv[1], int(sys.argv[2])
head, body, nxt = (open(p, "rb").read() for p in sys.argv[3:6])
sent_out, recv_out = sys.argv[6], sys.argv[7]
s = socket.create_connection((host, port))
buf = b""
received = b""

def read_response():
    global buf, received
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        if not data:
            raise EOFError("server closed")
        buf += data
    head_end = buf.index(b"\r\n\r\n") + 4
    length = 0
    for line in buf[:head_end].split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(buf) < head_end + length:
        data = s.recv(65536)
        if not data:
            raise EOFError("server closed")
        buf += data
    received += buf[:head_end + length]
    buf = buf[head_end + length:]

s.sendall(head)
print("head sent", flush=True)
sys.stdin.readline()
s.sendall(body)
read_response()
s.sendall(nxt)
read_response()
s.close()
open(sent_out, "wb").write(head + body + nxt)
open(recv_out, "wb").write(received)
print("done", flush=True)
