#!/usr/bin/env python3
"""A TLS server that completes every handshake and then never reads: the far end of an upload
that stalls. Writes its port to PORT_FILE. Usage: stall_server.py PORT_FILE CERT KEY"""
import socket
import ssl
import sys
import threading

port_file, cert, key = sys.argv[1:4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
listener.bind(("127.0.0.1", 0))
listener.listen(64)
with open(port_file + ".tmp", "w") as f:
    f.write(str(listener.getsockname()[1]))
import os
os.replace(port_file + ".tmp", port_file)
held = []


def handshake(conn):
    try:
        held.append(ctx.wrap_socket(conn, server_side=True))
    except Exception:  # noqa: BLE001 - a failed handshake is the client's business
        conn.close()


while True:
    conn, _ = listener.accept()
    threading.Thread(target=handshake, args=(conn,), daemon=True).start()
