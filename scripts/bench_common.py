"""Shared by the benchmark scripts: gRPC stubs generated from proto/ at run time, and a
release server started on a free loopback port and waited for."""

import contextlib
import importlib
import os
import socket
import subprocess
import sys
import time

import grpc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(REPO, "target", "release", "integrad")
# Replies carry 600 kB of attributions (and PNGs on request): above grpcio's 4 MB default
# only with many targets, but the server's own limit is 64 MiB.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20),
                   ("grpc.max_send_message_length", 64 << 20)]


def stubs(out_dir):
    """(explainer_pb2, explainer_pb2_grpc), generated into out_dir."""
    from grpc_tools import protoc
    proto_root = os.path.join(REPO, "proto")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out_dir}",
                      f"--grpc_python_out={out_dir}",
                      os.path.join(proto_root, "integrad", "v1", "explainer.proto")])
    if rc != 0:
        raise SystemExit(f"protoc failed on proto/integrad/v1/explainer.proto (exit {rc})")
    sys.path.insert(0, out_dir)
    return (importlib.import_module("integrad.v1.explainer_pb2"),
            importlib.import_module("integrad.v1.explainer_pb2_grpc"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(stub, request, server=None, seconds=600):
    """Sends the Predict `request` until it succeeds (the models are loaded and warm)."""
    end = time.time() + seconds
    while True:
        if server is not None and server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode} before it "
                             "was ready (its stderr is above)")
        try:
            stub.Predict(request, timeout=30)
            return
        except grpc.RpcError:
            if time.time() > end:
                raise
            time.sleep(0.2)


@contextlib.contextmanager
def server(args, binary=BINARY):
    """Starts `binary serve --listen 127.0.0.1:PORT ARGS...`; yields (address, process) and
    stops it on exit. Its stderr (the logs) goes to ours."""
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{binary} is not there; run `cargo build --release` first")
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen([binary, "serve", "--listen", address, *args],
                               stdout=subprocess.DEVNULL)
    try:
        yield address, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def peak_rss_mb(process):
    """The process's peak resident memory so far (VmHWM), in MB; None where /proc has none."""
    try:
        with open(f"/proc/{process.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
