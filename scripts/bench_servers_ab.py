#!/usr/bin/env python3
"""Time the same Explain on several integrad servers side by side: builds or settings A/B.

Each variant is `LABEL=ENV@BINARY`: ENV a comma-separated list of NAME:VALUE pairs for the
server's environment (empty for none), BINARY an integrad build (default
target/release/integrad). All servers start at once (`serve --intra-threads THREADS`, the
repository's models), each gets one warm-up Explain per workload, then every round sends
each workload to each server in turn, with a --settle pause before each request; medians
(min - max) per workload and variant. Alternating within a round means a machine that slows
down or speeds up during the run does so for every variant alike.

Workloads, on the coffee photo's preprocessed tensor (tests/data/coffee_input.npy), class
967, PROBABILITY objective:

- ig: IG, 100 trapezoid steps (101 alphas), black baseline;
- tunnel: the same IG with 20 steps under a SmoothGrad noise tunnel of 10 samples, stdev 0.15,
  seed 0 (210 gradient rows);
- blur: Blur IG, 100 steps, max_sigma 50, grad_step 0.01;
- guided: Guided IG, 200 steps, fraction 0.25, max_dist 0.02, baseline zeros.

    .venv-dev/bin/python scripts/bench_servers_ab.py \\
        'sleeping=INTEGRAD_INTRA_SPIN:false;spinning=INTEGRAD_INTRA_SPIN:true' \\
        --workloads ig,tunnel,guided --rounds 8

    cp target/release/integrad target/integrad-old    # before rebuilding the change
    .venv-dev/bin/python scripts/bench_servers_ab.py 'old=@target/integrad-old;new=' --rounds 8

An idle server's ONNX Runtime threads sleep, so the servers waiting their turn do not take
the cores from the one answering (with `--intra-spin` the threads spin during runs only).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import grpc
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import BINARY, CHANNEL_OPTIONS, REPO, free_port, stubs, wait_ready  # noqa: E402

TARGET = 967
BLACK = (0.0 - 127.0) / 128.0
WORKLOADS = ["ig", "tunnel", "blur", "guided"]


def requests(pb, x_np):
    """The workloads' ExplainRequests by name."""
    def tensor(a):
        return pb.Tensor(shape=list(a.shape), dtype=pb.DATA_TYPE_FLOAT32,
                         data=np.ascontiguousarray(a, dtype="<f4").tobytes())

    x = pb.Input(tensor=tensor(x_np))
    black = pb.Baseline(tensor=tensor(np.full(x_np.shape, BLACK, dtype=np.float32)))
    common = dict(input=x, target=pb.Target(class_index=TARGET),
                  objective=pb.OBJECTIVE_PROBABILITY)
    return {
        "ig": pb.ExplainRequest(**common, method=pb.METHOD_TRAPEZOID, steps=100,
                                baseline=black),
        "tunnel": pb.ExplainRequest(
            **common, method=pb.METHOD_TRAPEZOID, steps=20, baseline=black,
            noise_tunnel=pb.NoiseTunnel(samples=10, stdev=0.15,
                                        kind=pb.NOISE_KIND_SMOOTHGRAD, seed=0)),
        "blur": pb.ExplainRequest(**common, technique=pb.TECHNIQUE_BLUR_IG, steps=100,
                                  blur_ig=pb.BlurIgOptions(max_sigma=50.0, grad_step=0.01)),
        "guided": pb.ExplainRequest(
            **common, technique=pb.TECHNIQUE_GUIDED_IG, steps=200,
            baseline=pb.Baseline(zeros=True),
            guided_ig=pb.GuidedIgOptions(fraction=0.25, max_dist=0.02)),
    }


def parse_variant(text):
    """`LABEL=ENV@BINARY` -> (label, environment additions, binary)."""
    label, sep, spec = text.partition("=")
    if not sep or not label:
        raise SystemExit(f"variant {text!r} is not LABEL=ENV@BINARY")
    env_text, _, binary = spec.partition("@")
    env = {}
    for pair in filter(None, env_text.split(",")):
        name, sep, value = pair.partition(":")
        if not sep:
            raise SystemExit(f"variant {label!r}: {pair!r} is not NAME:VALUE")
        env[name] = value
    return label, env, binary or BINARY


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variants", help="LABEL=ENV@BINARY;LABEL=ENV@BINARY;...")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settle", type=float, default=0.3)
    args = ap.parse_args()
    variants = [parse_variant(v) for v in args.variants.split(";") if v]
    workloads = args.workloads.split(",")
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}; known: {WORKLOADS}")

    pb, rpc = stubs(tempfile.mkdtemp(prefix="integrad-ab-"))
    x_np = np.load(os.path.join(REPO, "tests", "data", "coffee_input.npy")).astype(np.float32)
    asks = requests(pb, x_np)
    servers = []
    try:
        for label, env, binary in variants:
            if not os.access(binary, os.X_OK):
                raise SystemExit(f"{binary} is not there; run `cargo build --release` first")
            address = f"127.0.0.1:{free_port()}"
            process = subprocess.Popen(
                [binary, "serve", "--listen", address, "--intra-threads", str(args.threads),
                 "--models", os.path.join(REPO, "models")],
                env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            servers.append((label, process, None))
            stub = rpc.ExplainerStub(grpc.insecure_channel(address, options=CHANNEL_OPTIONS))
            wait_ready(stub, pb.PredictRequest(input=asks["ig"].input), process)
            servers[-1] = (label, process, stub)

        def explain(stub, workload):
            start = time.perf_counter()
            result = None
            for event in stub.Explain(asks[workload], timeout=3600):
                if event.WhichOneof("event") == "result":
                    result = event.result
            if result is None:
                raise SystemExit(f"{workload}: the Explain ended without a result")
            return time.perf_counter() - start

        for workload in workloads:
            for _, _, stub in servers:
                explain(stub, workload)
        times = {(label, w): [] for label, _, _ in servers for w in workloads}
        for _ in range(args.rounds):
            for workload in workloads:
                for label, _, stub in servers:
                    time.sleep(args.settle)
                    times[(label, workload)].append(explain(stub, workload))
        print(f"threads {args.threads}, {args.rounds} rounds, settle {args.settle} s, "
              f"load average {os.getloadavg()[0]:.2f}")
        for workload in workloads:
            cells = []
            for label, _, _ in servers:
                t = times[(label, workload)]
                cells.append(f"{label} {statistics.median(t):.3f} s "
                             f"({min(t):.3f} - {max(t):.3f})")
            print(f"{workload:7s} " + "   ".join(cells))
    finally:
        for _, process, _ in servers:
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
