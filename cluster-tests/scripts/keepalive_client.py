#!/usr/bin/env python3
"""A long-lived mTLS HTTP/1.1 client: one connection, one GET per line read on stdin, prints
"ok <status>" or "error <reason>" per request. Usage:
keepalive_client.py HOST:PORT SNI CA_FILE CERT KEY PATH"""
import socket
import ssl
import sys

target, sni, ca, cert, key, path = sys.argv[1:7]
host, port = target.rsplit(":", 1)
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
try:
    raw = socket.create_connection((host, int(port)), timeout=10)
    tls = ctx.wrap_socket(raw, server_hostname=sni)
except Exception as e:  # noqa: BLE001 - the test reads the reason
    print(f"error connect {e}", flush=True)
    sys.exit(0)
buf = b""
for _ in sys.stdin:
    try:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {sni}\r\n\r\n".encode())
        while b"\r\n\r\n" not in buf:
            data = tls.recv(65536)
            if not data:
                raise EOFError("connection closed")
            buf += data
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        while len(buf) < length:
            data = tls.recv(65536)
            if not data:
                raise EOFError("connection closed in the body")
            buf += data
        buf = buf[length:]
        print(f"ok {lines[0].split()[1]}", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"error {e}", flush=True)
        break
