#!/usr/bin/env python3
"""Client of tls_sink.py through the egress: sends SIZE random bytes over TLS with SNI, half-closes
its TCP write side (no close_notify), then reads the answer. Prints
"<local sha256> <size> <remote answer>". Usage: tls_upload.py HOST:PORT SNI CA_FILE SIZE"""
import hashlib
import os
import socket
import ssl
import sys

target, sni, ca, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
host, port = target.rsplit(":", 1)
ctx = ssl.create_default_context(cafile=ca)
raw = socket.create_connection((host, int(port)), timeout=120)
tls = ctx.wrap_socket(raw, server_hostname=sni)
digest, left = hashlib.sha256(), size
chunk = os.urandom(1 << 20)
while left > 0:
    piece = chunk[: min(left, len(chunk))]
    tls.sendall(piece)
    digest.update(piece)
    left -= len(piece)
# Half-close at the TCP level: the TLS session stays open for reading.
socket.socket(fileno=os.dup(tls.fileno())).shutdown(socket.SHUT_WR)
answer = b""
while True:
    data = tls.recv(4096)
    if not data:
        break
    answer += data
print(digest.hexdigest(), size, answer.decode().strip())
