#!/usr/bin/env python3
"""Time one warm integrad Explain against Captum's IntegratedGradients, side by side.

The workload (the Explain vs Captum benchmark): the demo model (EfficientNet-Lite0), the coffee photo
as its preprocessed 224x224 tensor (tests/data/coffee_input.npy), target 967 (espresso),
PROBABILITY objective, black baseline, 50 trapezoid steps = 51 gradient evaluations (and any
other step counts given with --steps, e.g. 50,300: each is timed on its own).
Captum gets the same: the PyTorch model model.onnx was exported from
(make_demo_model.load_model), softmax forward, riemann_trapezoid with n_steps = steps + 1
(51 alphas at 50 steps; its weights are not normalised, which does not change the time), all
alphas in one batch (Captum's default internal_batch_size; --captum-batch-size N splits them),
torch.set_num_threads(THREADS). The server runs with --intra-threads THREADS. Runs alternate
(Explain, Captum, Explain, ...) after one warm-up each, so both see the same machine load;
medians are printed. Each timed run starts after a --settle pause (0.5 s): the server's
ONNX Runtime threads and PyTorch's OpenMP threads (in this process) may spin for a while
after their own work, and neither side's run should start while the other's pool may still
hold the cores.

"One forward" is the server's own inference_ms of a batch-1 Predict on the same tensor
(median), so explain / (alphas x forward) is the distance from the floor of running the
forward once per alpha.

    cargo build --release
    .venv-dev/bin/python scripts/bench_explain_vs_captum.py [--url http://HOST:PORT]
        [--runs 5] [--threads 2] [--steps 50,300] [--batch-size N] [--captum-batch-size N]

Without --url it starts target/release/integrad serve on a free loopback port and stops it
at the end. Needs the dev virtualenv (scripts/requirements-dev.txt, grpcio included).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import grpc
import numpy as np
import torch
from captum.attr import IntegratedGradients

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import CHANNEL_OPTIONS, REPO, server, stubs, wait_ready  # noqa: E402
from make_demo_model import load_model  # noqa: E402

TARGET = 967


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running server; default: start target/release/integrad")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", default="50",
                    help="comma-separated step counts, each timed on its own (e.g. 50,300)")
    ap.add_argument("--batch-size", type=int, default=0,
                    help="alphas per gradient run; 0: the server's default")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds to pause before each timed run, so that neither side's "
                         "thread pool is still spinning from the other's run (0: none)")
    ap.add_argument("--captum-batch-size", type=int, default=0,
                    help="Captum's internal_batch_size; 0: all alphas in one batch (Captum's "
                         "default; 301 alphas at 300 steps need many GB)")
    args = ap.parse_args()
    args.steps = [int(s) for s in args.steps.split(",") if s.strip()]
    if not args.steps or min(args.steps) < 1:
        raise SystemExit("--steps: expected positive numbers, e.g. 50,300")
    torch.set_num_threads(args.threads)

    x_np = np.load(os.path.join(REPO, "tests", "data", "coffee_input.npy"))
    with tempfile.TemporaryDirectory() as tmp:
        pb, rpc = stubs(tmp)
        if args.url:
            run(args, pb, rpc, args.url.split("://", 1)[-1], x_np)
        else:
            flags = ["--intra-threads", str(args.threads), "--models",
                     os.path.join(REPO, "models")]
            with server(flags) as (address, process):
                run(args, pb, rpc, address, x_np, process)


def run(args, pb, rpc, target, x_np, process=None):
    tensor = pb.Tensor(shape=list(x_np.shape), dtype=pb.DATA_TYPE_FLOAT32,
                       data=x_np.astype("<f4").tobytes())
    channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    stub = rpc.ExplainerStub(channel)
    wait_ready(stub, pb.PredictRequest(input=pb.Input(tensor=tensor)), process)
    model = load_model()
    forward = lambda z: torch.softmax(model(z), dim=1)  # noqa: E731
    ig = IntegratedGradients(forward)
    x = torch.from_numpy(x_np)[None]
    base = torch.full_like(x, (0.0 - 127.0) / 128.0)

    def explain(steps):
        request = pb.ExplainRequest(
            input=pb.Input(tensor=tensor), target=pb.Target(class_index=TARGET),
            objective=pb.OBJECTIVE_PROBABILITY,
            # NOTE: Baseline.black needs an image input; for a tensor it is sent as a tensor.
            baseline=pb.Baseline(tensor=pb.Tensor(
                shape=list(x_np.shape), dtype=pb.DATA_TYPE_FLOAT32,
                data=np.full(x_np.shape, (0.0 - 127.0) / 128.0, dtype="<f4").tobytes())),
            method=pb.METHOD_TRAPEZOID, steps=steps, batch_size=args.batch_size)
        t = time.perf_counter()
        result = None
        for event in stub.Explain(request, timeout=3600):
            if event.WhichOneof("event") == "result":
                result = event.result
        if result is None:
            raise SystemExit(f"Explain at {steps} steps ended without an explanation")
        return time.perf_counter() - t, result

    def captum(steps):
        # Captum's n_steps counts alphas: steps + 1 of them, as the trapezoid rule's.
        t = time.perf_counter()
        ig.attribute(x, baselines=base, target=TARGET, n_steps=steps + 1,
                     method="riemann_trapezoid", return_convergence_delta=True,
                     internal_batch_size=args.captum_batch_size or None)
        return time.perf_counter() - t

    measured = []
    for steps in args.steps:
        explain(steps)
        captum(steps)  # warm-up
        ours, theirs = [], []
        for i in range(args.runs):
            time.sleep(args.settle)
            t, result = explain(steps)
            ours.append(t)
            time.sleep(args.settle)
            c = captum(steps)
            theirs.append(c)
            print(f"{steps} steps, run {i + 1}: explain {t:.3f} s, captum {c:.3f} s",
                  flush=True)
        measured.append((steps, ours, theirs, result))

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

    f = statistics.median(forwards)
    captum_batch = args.captum_batch_size or "all alphas"
    print(f"\nthreads {args.threads}, {args.runs} alternating runs, Captum batch "
          f"{captum_batch}, load average {os.getloadavg()[0]:.2f}")
    print(f"one ORT forward (batch 1, server inference_ms): {f * 1000:.1f} ms; "
          f"PyTorch forward: {statistics.median(torch_fw) * 1000:.1f} ms")
    for steps, ours, theirs, result in measured:
        e, c = statistics.median(ours), statistics.median(theirs)
        alphas = result.evaluations
        print(f"\n{steps} steps:")
        print(f"  integrad Explain (gRPC, {alphas} alphas): median {e:.3f} s "
              f"({min(ours):.3f} - {max(ours):.3f})")
        print(f"  Captum IG ({steps + 1} alphas):             median {c:.3f} s "
              f"({min(theirs):.3f} - {max(theirs):.3f})")
        print(f"  ratio explain / captum: {e / c:.3f}")
        print(f"  explain / ({alphas} x one forward): {e / (alphas * f):.2f}")
        print(f"  result: target {result.target_class} {result.label}, steps {result.steps}, "
              f"delta {result.convergence_delta:+.5f}")


if __name__ == "__main__":
    main()
