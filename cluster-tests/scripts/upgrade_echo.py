#!/usr/bin/env python3
"""A plain-HTTP upstream that accepts an HTTP/1.1 upgrade (`Upgrade: echo`) and then echoes
bytes: the far end of the upgrade (WebSocket-like) test. Other requests get 426. Writes its port
to PORT_FILE. Usage: upgrade_echo.py PORT_FILE"""
import os
import socket
import sys
import threading

port_file = sys.argv[1]
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)
with open(port_file + ".tmp", "w") as f:
    f.write(str(listener.getsockname()[1]))
os.replace(port_file + ".tmp", port_file)


def serve(conn):
    conn.settimeout(60)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            return
        head += chunk
    head, rest = head.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
    if headers.get("upgrade", "").lower() != "echo":
        conn.sendall(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
        conn.close()
        return
    host = headers.get("host", "")
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\nX-Seen-Host: " + host.encode() + b"\r\n\r\n")
    if rest:
        conn.sendall(rest)
    while True:
        data = conn.recv(65536)
        if not data:
            break
        conn.sendall(data)
    conn.close()


while True:
    c, _ = listener.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
