#!/usr/bin/env python3
"""A destination 'sidecar' for the cross-zone tests: a TLS server (the mesh certificate of the
destination) that reads everything the client sends until the client half-closes, then answers
"<sha256> <length>\n" and closes. Usage: tls_sink.py PORT_FILE CERT KEY"""
import hashlib
import os
import socket
import ssl
import sys
import threading

port_file, cert, key = sys.argv[1:4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
# A TCP half-close without close_notify is the client's end of data, not an error.
ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(512)
tmp = port_file + ".tmp"
with open(tmp, "w") as f:
    f.write(str(srv.getsockname()[1]))
os.rename(tmp, port_file)


def handle(conn):
    try:
        conn.settimeout(120)
        tls = ctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=True)
        digest, total = hashlib.sha256(), 0
        while True:
            try:
                data = tls.recv(1 << 16)
            except ssl.SSLEOFError:
                # The client half-closed TCP without close_notify: that is the end of its data.
                data = b""
            if not data:
                break
            digest.update(data)
            total += len(data)
        tls.sendall(f"{digest.hexdigest()} {total}\n".encode())
        tls.close()
    except Exception as e:  # one bad client must not stop the server
        print("sink:", e, file=sys.stderr)


while True:
    c, _ = srv.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
