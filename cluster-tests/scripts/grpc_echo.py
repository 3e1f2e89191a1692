#!/usr/bin/env python3
"""A real gRPC server and client (grpcio from PyPI) for the egress's gRPC path.

  grpc_echo.py serve PORT_FILE     plaintext HTTP/2 server; writes its port to PORT_FILE
  grpc_echo.py call PORT           client: unary echo of 1 MiB (reply and trailing metadata
                                   checked), then a call the server fails with NOT_FOUND (status
                                   from the trailers checked); prints "ok" and exits 0

Methods take and return raw bytes (no protobuf code generation needed)."""
import os
import sys
import time
from concurrent import futures

import grpc


def say(request, context):
    context.set_trailing_metadata((("x-echo-trailer", "yes"),))
    return request


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def serve(port_file):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "echo.Echo",
        {
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(port_file + ".tmp", port_file)
    while True:
        time.sleep(3600)


def call(port):
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.default_authority", "echo-grpc.mesh")]
    )
    payload = os.urandom(1 << 20)
    reply, c = channel.unary_unary("/echo.Echo/Say").with_call(payload, timeout=20)
    assert reply == payload, f"echo differs: {len(reply)} bytes"
    trailers = dict(c.trailing_metadata())
    assert trailers.get("x-echo-trailer") == "yes", f"trailers: {trailers}"
    try:
        channel.unary_unary("/echo.Echo/Fail")(b"x", timeout=20)
        raise AssertionError("Fail succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, f"{e.code()} {e.details()}"
        assert e.details() == "no such thing", e.details()
    print("ok")


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        call(sys.argv[2])
