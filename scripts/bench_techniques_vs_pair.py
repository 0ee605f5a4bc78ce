#!/usr/bin/env python3
"""Time integrad's Blur IG, Guided IG, noise tunnel and XRAI against PAIR and Captum.

The workloads, one photo (the coffee photo's preprocessed 224x224 tensor,
tests/data/coffee_input.npy, target 967 espresso), PROBABILITY objective, each side by side in
one run on the same CPU threads:

- blur_ig: integrad Explain with TECHNIQUE_BLUR_IG, steps 100, max_sigma 50, grad_step 0.01;
  PAIR `BlurIG().GetMask` with the same defaults (100 gradient evaluations, PAIR's
  batch_size --pair-batch-size).
- guided_ig: integrad TECHNIQUE_GUIDED_IG, steps 200, fraction 0.25, max_dist 0.02, baseline
  zeros; PAIR `GuidedIG().GetMask` with the same (200 gradient evaluations, one at a time:
  each step's path depends on the last gradient).
- noise_tunnel: integrad IG (trapezoid, 20 steps = 21 alphas, black baseline) with a
  SmoothGrad noise tunnel of 10 samples at stdev 0.15 of the input's range; Captum
  `NoiseTunnel(IntegratedGradients)` smoothgrad, nt_samples 10, riemann_trapezoid n_steps 21,
  stdevs 0.15 x (max - min) of the input (Captum's is absolute), one sample's 21 alphas per
  batch (--captum-samples-batch).
- xrai: integrad TECHNIQUE_XRAI (two IG runs, black and white baselines, --xrai-steps
  trapezoid steps each) end to end, against integrad's two IG runs alone (Explain with the
  same steps twice, black then white baseline, timed together), and against PAIR's
  `XRAI().GetMask` end to end (its IG with the same number of alphas, steps + 1, from its
  default baselines min(x) and max(x): black and white for this photo; Felzenszwalb
  segmentation; the full XRAI ranking).

PAIR and Captum get the PyTorch model that model.onnx was exported from
(make_demo_model.load_model) with torch.set_num_threads(THREADS); the server runs with
--intra-threads THREADS. As in bench_explain_vs_captum.py, runs alternate after one warm-up
each, each timed run starts after a --settle pause (neither side's thread pool may still be
spinning from the other's run), and medians are printed.

A technique the server refuses (an error status, or a result made by another technique:
a server that predates the technique fields ignores them and runs IG) is reported as
refused with the server's message; the peer is still timed.

    cargo build --release
    .venv-dev/bin/python scripts/bench_techniques_vs_pair.py [--url http://HOST:PORT]
        [--runs 3] [--threads 2] [--only blur_ig,guided_ig,noise_tunnel,xrai]

Without --url it starts target/release/integrad serve on a free loopback port and stops it
at the end (--binary names another build). Needs the dev virtualenv
(scripts/requirements-dev.txt: saliency, captum, grpcio included).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import types

import grpc
import numpy as np
import saliency.core as pair
import torch
from captum.attr import IntegratedGradients, NoiseTunnel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import BINARY, CHANNEL_OPTIONS, REPO, server, stubs, wait_ready  # noqa: E402
from make_demo_model import load_model  # noqa: E402
# TorchGradients: PyTorch gradients of the probability for PAIR; importing the module also
# lets PAIR's Guided IG run on NumPy 2 (see its _NumpyForPair).
from make_technique_fixtures import TorchGradients  # noqa: E402

TARGET = 967
BLACK = (0.0 - 127.0) / 128.0
WHITE = (255.0 - 127.0) / 128.0
WORKLOADS = ["blur_ig", "guided_ig", "noise_tunnel", "xrai"]


class Refused(Exception):
    """The server would not run the technique asked for."""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running server; default: start --binary")
    ap.add_argument("--binary", default=BINARY, help="the integrad build to start")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=",".join(WORKLOADS),
                    help="comma-separated workloads, of " + ",".join(WORKLOADS))
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds to pause before each timed run (0: none)")
    ap.add_argument("--pair-batch-size", type=int, default=1,
                    help="PAIR's batch_size for Blur IG and XRAI's IG (PAIR's default: 1)")
    ap.add_argument("--captum-samples-batch", type=int, default=1,
                    help="Captum's nt_samples_batch_size: noisy samples per IG run (each "
                         "takes 21 alphas in one batch)")
    ap.add_argument("--xrai-steps", type=int, default=100,
                    help="integrad's trapezoid steps per XRAI IG run (PAIR: steps + 1)")
    args = ap.parse_args()
    args.only = [w for w in args.only.split(",") if w]
    if not args.only or set(args.only) - set(WORKLOADS):
        raise SystemExit(f"--only: expected some of {','.join(WORKLOADS)}")
    torch.set_num_threads(args.threads)

    x_np = np.load(os.path.join(REPO, "tests", "data", "coffee_input.npy"))
    with tempfile.TemporaryDirectory() as tmp:
        pb, rpc = stubs(tmp)
        if args.url:
            run(args, pb, rpc, args.url.split("://", 1)[-1], x_np)
        else:
            flags = ["--intra-threads", str(args.threads), "--models",
                     os.path.join(REPO, "models")]
            with server(flags, binary=args.binary) as (address, process):
                run(args, pb, rpc, address, x_np, process)


def run(args, pb, rpc, address, x_np, process=None):
    def tensor(a):
        return pb.Tensor(shape=list(a.shape), dtype=pb.DATA_TYPE_FLOAT32,
                         data=np.ascontiguousarray(a, dtype="<f4").tobytes())

    x_tensor = tensor(x_np)
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    stub = rpc.ExplainerStub(channel)
    wait_ready(stub, pb.PredictRequest(input=pb.Input(tensor=x_tensor)), process)
    model = load_model()
    x = torch.from_numpy(x_np)[None]
    x_hwc = x_np.transpose(1, 2, 0)
    grads_nchw = TorchGradients(model, TARGET)
    grads_nhwc = TorchGradients(model, TARGET, layout="NHWC")
    forward = lambda z: torch.softmax(model(z), dim=1)  # noqa: E731
    # NOTE: Baseline.black needs an image input; for a tensor it is sent as a tensor.
    black = pb.Baseline(tensor=tensor(np.full(x_np.shape, BLACK, dtype=np.float32)))
    white = pb.Baseline(tensor=tensor(np.full(x_np.shape, WHITE, dtype=np.float32)))

    def explain(technique, **fields):
        """One Explain; (seconds, Explanation). Raises Refused when the server will not run
        `technique`."""
        # The quadrature rule of the straight paths (IG, XRAI's runs: trapezoid); Blur IG
        # takes its default (PAIR's right-point sum) and Guided IG none.
        method = {pb.TECHNIQUE_BLUR_IG: pb.METHOD_UNSPECIFIED,
                  pb.TECHNIQUE_GUIDED_IG: pb.METHOD_UNSPECIFIED}.get(technique,
                                                                      pb.METHOD_TRAPEZOID)
        request = pb.ExplainRequest(
            input=pb.Input(tensor=x_tensor), target=pb.Target(class_index=TARGET),
            objective=pb.OBJECTIVE_PROBABILITY, method=method,
            technique=technique, **fields)
        t = time.perf_counter()
        result = None
        try:
            for event in stub.Explain(request, timeout=3600):
                if event.WhichOneof("event") == "result":
                    result = event.result
        except grpc.RpcError as e:
            raise Refused(f"{e.code().name}: {e.details()}") from None
        elapsed = time.perf_counter() - t
        if result is None:
            raise SystemExit(f"Explain ({pb.Technique.Name(technique)}) ended without an "
                             "explanation")
        ran = result.technique or pb.TECHNIQUE_INTEGRATED_GRADIENTS
        if ran != technique:
            raise Refused(f"the server ran {pb.Technique.Name(ran)} instead (it does not know "
                          f"{pb.Technique.Name(technique)})")
        noise = fields.get("noise_tunnel")
        if noise is not None and result.noise_samples != noise.samples:
            raise Refused(f"the server ran {result.noise_samples} noise samples, not "
                          f"{noise.samples} (it does not know the noise tunnel)")
        return elapsed, result

    def timed(f):
        t = time.perf_counter()
        f()
        return time.perf_counter() - t

    ig = pb.TECHNIQUE_INTEGRATED_GRADIENTS
    steps_x = args.xrai_steps
    stdev = 0.15 * float(x_np.max() - x_np.min())
    workloads = {
        "blur_ig": (
            "Blur IG, 100 steps",
            {"integrad Explain (BLUR_IG)": lambda: explain(
                pb.TECHNIQUE_BLUR_IG, steps=100,
                blur_ig=pb.BlurIgOptions(max_sigma=50.0, grad_step=0.01))},
            {"PAIR BlurIG (100 gradients)": lambda: timed(lambda: pair.BlurIG().GetMask(
                x_hwc, grads_nhwc, max_sigma=50, steps=100, grad_step=0.01,
                batch_size=args.pair_batch_size))}),
        "guided_ig": (
            "Guided IG, 200 steps, baseline zeros",
            {"integrad Explain (GUIDED_IG)": lambda: explain(
                pb.TECHNIQUE_GUIDED_IG, steps=200, baseline=pb.Baseline(zeros=True),
                guided_ig=pb.GuidedIgOptions(fraction=0.25, max_dist=0.02))},
            {"PAIR GuidedIG (200 gradients)": lambda: timed(lambda: pair.GuidedIG().GetMask(
                x_np, grads_nchw, x_baseline=np.zeros_like(x_np), x_steps=200,
                fraction=0.25, max_dist=0.02))}),
        "noise_tunnel": (
            "SmoothGrad over IG, 10 samples x 20 trapezoid steps (21 alphas), stdev 0.15",
            {"integrad Explain (IG + noise tunnel)": lambda: explain(
                ig, steps=20, baseline=black,
                noise_tunnel=pb.NoiseTunnel(samples=10, stdev=0.15,
                                            kind=pb.NOISE_KIND_SMOOTHGRAD, seed=0))},
            {"Captum NoiseTunnel(IG) (210 gradients)": lambda: timed(
                lambda: NoiseTunnel(IntegratedGradients(forward)).attribute(
                    x, nt_type="smoothgrad", nt_samples=10,
                    nt_samples_batch_size=args.captum_samples_batch, stdevs=stdev,
                    baselines=torch.full_like(x, BLACK), target=TARGET, n_steps=21,
                    method="riemann_trapezoid"))}),
        "xrai": (
            f"XRAI end to end, IG {steps_x} trapezoid steps x 2 baselines",
            {"integrad Explain (XRAI)": lambda: explain(
                pb.TECHNIQUE_XRAI, steps=steps_x),
             f"integrad IG x 2 ({steps_x} steps, black + white)": lambda: two_igs()},
            {f"PAIR XRAI ({2 * (steps_x + 1)} gradients)": lambda: timed(
                lambda: pair.XRAI().GetMask(
                    x_hwc, grads_nhwc, batch_size=args.pair_batch_size,
                    extra_parameters=pair.XRAIParameters(steps=steps_x + 1)))}),
    }

    def two_igs():
        t1, r1 = explain(ig, steps=steps_x, baseline=black)
        t2, r2 = explain(ig, steps=steps_x, baseline=white)
        # Only the gradient evaluations add up; each run has its own sum and delta.
        return t1 + t2, types.SimpleNamespace(evaluations=r1.evaluations + r2.evaluations)

    reports = []
    for name in args.only:
        title, ours, theirs = workloads[name]
        sides = {**ours, **theirs}
        times = {label: [] for label in sides}
        results, refused = {}, {}
        for i in range(args.runs + 1):  # run 0 is the warm-up
            for label, f in sides.items():
                if label in refused:
                    continue
                if i > 0:
                    time.sleep(args.settle)
                try:
                    out = f()
                except Refused as e:
                    refused[label] = str(e)
                    print(f"{name}: {label}: refused: {e}", flush=True)
                    continue
                t = out[0] if isinstance(out, tuple) else out
                if isinstance(out, tuple):
                    results[label] = out[1]
                if i > 0:
                    times[label].append(t)
            if i > 0:
                line = ", ".join(f"{label} {times[label][-1]:.3f} s" for label in sides
                                 if label not in refused)
                print(f"{name}, run {i}: {line}", flush=True)
        reports.append((name, title, sides, times, results, refused))

    print(f"\nthreads {args.threads}, {args.runs} alternating runs after a warm-up, settle "
          f"{args.settle} s, PAIR batch_size {args.pair_batch_size}, Captum samples per "
          f"batch {args.captum_samples_batch}, load average {os.getloadavg()[0]:.2f}")
    for name, title, sides, times, results, refused in reports:
        print(f"\n{name}: {title}")
        medians = {}
        for label in sides:
            if label in refused:
                print(f"  {label}: refused ({refused[label]})")
                continue
            ts = times[label]
            medians[label] = statistics.median(ts)
            extra = ""
            if label in results:
                r = results[label]
                extra = f" [{r.evaluations} evaluations"
                if hasattr(r, "attribution_sum"):
                    extra += (f", sum {r.attribution_sum:+.5f}, "
                              f"delta {r.convergence_delta:+.5f}")
                if getattr(r, "regions", None):
                    extra += f", {len(r.regions)} regions"
                extra += "]"
            print(f"  {label}: median {medians[label]:.3f} s "
                  f"({min(ts):.3f} - {max(ts):.3f}){extra}")
        ours = [label for label in medians if label.startswith("integrad")]
        theirs = [label for label in medians if not label.startswith("integrad")]
        for a in ours:
            for b in theirs:
                print(f"  ratio {a} / {b}: {medians[a] / medians[b]:.3f}")
        if len(ours) == 2:
            print(f"  ratio {ours[0]} / {ours[1]}: {medians[ours[0]] / medians[ours[1]]:.3f}")


if __name__ == "__main__":
    main()
