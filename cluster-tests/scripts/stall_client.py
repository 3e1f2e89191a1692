#!/usr/bin/env python3
"""A TLS client that stops reading (or whose peer stops reading) and holds its connection:
MODE download: GET PATH, read one chunk, then never read again;
MODE upload:   send bytes until nothing moves for 2 s (the far side stopped reading).
Prints "stalled <bytes moved>" once stalled, then holds the connection until stdin closes.
Usage: stall_client.py MODE HOST:PORT SNI CA PATH"""
import socket
import ssl
import sys

mode, target, sni, ca, path = sys.argv[1:6]
host, port = target.rsplit(":", 1)
ctx = ssl.create_default_context(cafile=ca)
raw = socket.create_connection((host, int(port)), timeout=10)
# Small buffers, so the stall reaches the node quickly.
raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
tls = ctx.wrap_socket(raw, server_hostname=sni)
moved = 0
if mode == "download":
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {sni}\r\n\r\n".encode())
    moved = len(tls.recv(4096))
else:
    tls.settimeout(2)
    chunk = b"x" * 65536
    try:
        while True:
            moved += tls.send(chunk)
    except (socket.timeout, ssl.SSLWantWriteError):
        pass
print(f"stalled {moved}", flush=True)
sys.stdin.read()
