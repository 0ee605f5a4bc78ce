#!/usr/bin/env python3
"""Time one warm integrad Explain against Captum's IntegratedGradients, side by side.

The workload (issue 4's benchmark): the demo model (EfficientNet-Lite0), the coffee photo
as its preprocessed 224x224 tensor (tests/data/coffee_input.npy), target 967 (espresso),
PROBABILITY objective, black baseline, 50 trapezoid steps = 51 gradient evaluations.
Captum gets the same: the PyTorch model model.onnx was exported from
(make_demo_model.load_model), softmax forward, riemann_trapezoid with n_steps=51
(51 alphas; its weights are not normalised, which does not change the time), all alphas in
one batch (Captum's default internal_batch_size), torch.set_num_threads(THREADS). The
server runs with --intra-threads THREADS. Runs alternate (Explain, Captum, Explain, ...)
after one warm-up each, so both see the same machine load; medians are printed.

"One forward" is the server's own inference_ms of a batch-1 Predict on the same tensor
(median), so explain / (51 x forward) is the distance from the floor of running the
forward 51 times.

    cargo build --release
    /work/pyenv/bin/python scripts/bench_explain_vs_captum.py [--url http://HOST:PORT]
        [--runs 5] [--threads 2]

Without --url it starts target/release/integrad serve on a free loopback port and stops it
at the end. Needs the dev virtualenv (scripts/requirements-dev.txt, grpcio included).
"""

import argparse
import importlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import grpc
import numpy as np
import torch
from captum.attr import IntegratedGradients

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_demo_model import load_model  # noqa: E402

STEPS = 50
TARGET = 967


def stubs(out_dir):
    from grpc_tools import protoc
    proto_root = os.path.join(REPO, "proto")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out_dir}",
                      f"--grpc_python_out={out_dir}",
                      os.path.join(proto_root, "integrad", "v1", "explainer.proto")])
    assert rc == 0, rc
    sys.path.insert(0, out_dir)
    return (importlib.import_module("integrad.v1.explainer_pb2"),
            importlib.import_module("integrad.v1.explainer_pb2_grpc"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(stub, pb, tensor, seconds=600):
    end = time.time() + seconds
    while True:
        try:
            stub.Predict(pb.PredictRequest(input=pb.Input(tensor=tensor)), timeout=30)
            return
        except grpc.RpcError:
            if time.time() > end:
                raise
            time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running server; default: start target/release/integrad")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=0,
                    help="alphas per gradient run; 0: the server's default")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    x_np = np.load(os.path.join(REPO, "tests", "data", "coffee_input.npy"))
    server = None
    if args.url:
        target = args.url.split("://", 1)[-1]
    else:
        binary = os.path.join(REPO, "target", "release", "integrad")
        target = f"127.0.0.1:{free_port()}"
        server = subprocess.Popen(
            [binary, "serve", "--listen", target, "--intra-threads", str(args.threads),
             "--models", os.path.join(REPO, "models")],
            stdout=subprocess.DEVNULL)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pb, rpc = stubs(tmp)
            run(args, pb, rpc, target, x_np)
    finally:
        if server is not None:
            server.terminate()
            server.wait()


def run(args, pb, rpc, target, x_np):
    tensor = pb.Tensor(shape=list(x_np.shape), dtype=pb.DATA_TYPE_FLOAT32,
                       data=x_np.astype("<f4").tobytes())
    channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length",
                                                       64 << 20)])
    stub = rpc.ExplainerStub(channel)
    wait_ready(stub, pb, tensor)
    request = pb.ExplainRequest(
        input=pb.Input(tensor=tensor), target=pb.Target(class_index=TARGET),
        objective=pb.OBJECTIVE_PROBABILITY,
        # NOTE: Baseline.black needs an image input; for a tensor it is sent as a tensor.
        baseline=pb.Baseline(tensor=pb.Tensor(
            shape=list(x_np.shape), dtype=pb.DATA_TYPE_FLOAT32,
            data=np.full(x_np.shape, (0.0 - 127.0) / 128.0, dtype="<f4").tobytes())),
        method=pb.METHOD_TRAPEZOID, steps=STEPS, batch_size=args.batch_size)

    def explain():
        t = time.perf_counter()
        result = None
        for event in stub.Explain(request, timeout=600):
            if event.WhichOneof("event") == "result":
                result = event.result
        return time.perf_counter() - t, result

    model = load_model()
    forward = lambda z: torch.softmax(model(z), dim=1)  # noqa: E731
    ig = IntegratedGradients(forward)
    x = torch.from_numpy(x_np)[None]
    base = torch.full_like(x, (0.0 - 127.0) / 128.0)

    def captum():
        t = time.perf_counter()
        attr, delta = ig.attribute(x, baselines=base, target=TARGET, n_steps=STEPS + 1,
                                   method="riemann_trapezoid", return_convergence_delta=True)
        return time.perf_counter() - t, attr

    explain()
    captum()  # warm-up
    ours, theirs = [], []
    for i in range(args.runs):
        t, result = explain()
        ours.append(t)
        c, _ = captum()
        theirs.append(c)
        print(f"run {i + 1}: explain {t:.3f} s, captum {c:.3f} s", flush=True)

    forwards = []
    for _ in range(10):
        forwards.append(stub.Predict(pb.PredictRequest(input=pb.Input(tensor=tensor)))
                        .inference_ms / 1000)
    torch_fw = []
    with torch.no_grad():
        for _ in range(5):
            t = time.perf_counter()
            model(x)
            torch_fw.append(time.perf_counter() - t)

    e, c, f = statistics.median(ours), statistics.median(theirs), statistics.median(forwards)
    alphas = result.evaluations
    print(f"threads {args.threads}, {args.runs} alternating runs, load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"integrad Explain (gRPC, {alphas} alphas): median {e:.3f} s")
    print(f"Captum IG ({STEPS + 1} alphas):             median {c:.3f} s")
    print(f"ratio explain / captum: {e / c:.3f}")
    print(f"one ORT forward (batch 1, server inference_ms): {f * 1000:.1f} ms; "
          f"PyTorch forward: {statistics.median(torch_fw) * 1000:.1f} ms")
    print(f"explain / ({alphas} x one forward): {e / (alphas * f):.2f}")
    print(f"result: target {result.target_class} {result.label}, steps {result.steps}, "
          f"delta {result.convergence_delta:+.5f}")


if __name__ == "__main__":
    main()
