#!/usr/bin/env python3
"""Raw TCP client for pipelining: sends the bytes of a file in ONE write, reads
until the server closes (or a quiet period), and writes what it sent and received.
Usage: raw_client.py <host> <port> <request-file> <received-file>"""
import socket, sys, time
host, port, req_path, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
data = open(req_path, "rb").read()
s = socket.create_connection((host, port))
s.sendall(data)
s.settimeout(2.0)
got = b""
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
except socket.timeout:
    pass
s.close()
open(out_path, "wb").write(got)
