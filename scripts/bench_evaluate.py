#!/usr/bin/env python3
"""How long an Evaluate takes: each metric alone and all four, on the demo model and the cat
photo's committed IG map (tests/data/metrics/chelsea_ig.npy), through a release server on
loopback; next to PAIR's own compute_pic_metric (Python, the model in ONNX Runtime) and the
numpy RISE of scripts/make_metric_fixtures.py on the same input.

    cargo build --release
    .venv-dev/bin/python scripts/bench_evaluate.py [--repeats 3] [--integrad-only]

Prints a Markdown table of median wall times (ms) for docs/BENCHMARKS.md, with the server's
CPU time for integrad's rows.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import grpc
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402
import make_metric_fixtures as fixtures  # noqa: E402

DATA = os.path.join(bench_common.REPO, "tests", "data")


def tensor(pb2, array):
    array = np.ascontiguousarray(array, dtype=np.float32)
    return pb2.Tensor(shape=list(array.shape), dtype=pb2.DATA_TYPE_FLOAT32, data=array.tobytes())


def median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cpu_ms(process):
    """The process's CPU time so far (user + system, all its threads), in ms."""
    with open(f"/proc/{process.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1e3 / os.sysconf("SC_CLK_TCK")


def median_server_ms(fn, process, repeats):
    """Median wall time of `fn` and the median CPU time the server spent on it: CPU time
    moves less than wall time with the machine's load, and shows work that runs on several
    cores at once."""
    times, cpus = [], []
    for _ in range(repeats):
        cpu, start = cpu_ms(process), time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
        cpus.append(cpu_ms(process) - cpu)
    return statistics.median(times), statistics.median(cpus)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--binary", default=bench_common.BINARY)
    parser.add_argument("--integrad-only", action="store_true",
                        help="time integrad's Evaluate alone, not the Python references")
    args = parser.parse_args()

    x = np.load(os.path.join(DATA, "chelsea_input.npy"))
    crop = np.load(os.path.join(DATA, "chelsea_crop.npy"))
    ig = np.load(os.path.join(DATA, "metrics", "chelsea_ig.npy"))
    mask = np.load(os.path.join(DATA, "metrics", "chelsea_random_mask.npy"))
    saliency = np.abs(ig).sum(axis=0)

    rows = []
    with tempfile.TemporaryDirectory() as out:
        pb2, pb2_grpc = bench_common.stubs(out)
        models = os.path.join(bench_common.REPO, "models")
        with bench_common.server(["--models", models], binary=args.binary) as (address, server):
            channel = grpc.insecure_channel(address, options=bench_common.CHANNEL_OPTIONS)
            stub = pb2_grpc.ExplainerStub(channel)
            inp = pb2.Input(tensor=tensor(pb2, x))
            bench_common.wait_ready(stub, pb2.PredictRequest(model="efficientnet-lite0",
                                                             input=inp))
            cases = [("deletion", [pb2.METRIC_DELETION]),
                     ("insertion", [pb2.METRIC_INSERTION]),
                     ("SIC + AIC", [pb2.METRIC_SIC, pb2.METRIC_AIC]),
                     ("all four", [])]
            for name, metrics in cases:
                request = pb2.EvaluateRequest(
                    model="efficientnet-lite0", input=inp, saliency=tensor(pb2, ig),
                    target=pb2.Target(class_index=282), metrics=metrics,
                    pic=pb2.PicOptions(random_mask=tensor(pb2, mask), min_pred_value=0.0))
                response = stub.Evaluate(request, timeout=600)  # warm-up, and the counts
                ms, cpu = median_server_ms(lambda: stub.Evaluate(request, timeout=600), server,
                                           args.repeats)
                rows.append((f"integrad Evaluate: {name}", ms, cpu, response.images,
                             response.runs))

    if args.integrad_only:
        print_rows(rows)
        return
    model = fixtures.Model()
    rows.append(("numpy RISE deletion (ONNX Runtime, batches of 16)",
                 median_ms(lambda: fixtures.causal(model, x, saliency, 282, "deletion", "black"),
                           args.repeats), None, 29, 2))
    rows.append(("numpy RISE insertion",
                 median_ms(lambda: fixtures.causal(model, x, saliency, 282, "insertion", "blur"),
                           args.repeats), None, 29, 2))
    pair_ms = median_ms(lambda: fixtures.pic_metric(model, crop, saliency, mask.astype(bool),
                                                    282, "sic", 0.0), args.repeats)
    rows.append(("PAIR compute_pic_metric, SIC alone", pair_ms, None, 15, 15))
    print_rows(rows)


def print_rows(rows):
    print("| what | median ms | server CPU ms | pictures scored | model runs |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, ms, cpu, images, runs in rows:
        cpu = "" if cpu is None else f"{cpu:,.0f}"
        print(f"| {name} | {ms:,.0f} | {cpu} | {images} | {runs} |")


if __name__ == "__main__":
    main()
