#!/usr/bin/env python3
"""Time the demo's IG step model per row at several rows per run, threads sleeping or
spinning during runs.

The step model is the file `integrad autodiff --step` writes (byte for byte what Explain
runs: docs/autodiff.md), opened in onnxruntime with integrad's session settings: every graph
optimisation, sequential execution, --threads intra-op threads, and either
`allow_spinning 0` (`--intra-spin false`) or `allow_spinning 1` with `force_spinning_stop 1`
(the default: spinning during runs only). Each run is one path of the coffee photo's tensor
from a black baseline, alphas spread over (0, 1], the weighted sum inside the graph (what IG
and the straight walks ask for). After 3 warm-up runs per size, 5 series of about 48 rows per
size, sizes alternating within a series; the median ms per row.

    cargo build --release
    target/release/integrad autodiff models/efficientnet-lite0/model.onnx \\
        --objective probability --step --output target/step.onnx
    .venv-dev/bin/python scripts/bench_step_rows.py target/step.onnx [--rows 1,4,8,16]
"""

import argparse
import os
import statistics
import time

import numpy as np
import onnxruntime as ort

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 967
BLACK = (0.0 - 127.0) / 128.0


def session(path, threads, spinning):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1" if spinning else "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def feeds(x, rows, classes):
    alphas = np.linspace(1.0 / rows, 1.0, rows, dtype=np.float32)[:, None, None, None]
    cotangent = np.zeros((rows, classes), np.float32)
    cotangent[:, TARGET] = 1.0
    return {"cotangent": cotangent, "ig_input": x,
            "ig_baseline": np.full_like(x, BLACK), "ig_path": np.zeros(rows, np.int64),
            "ig_alpha": alphas, "ig_one_minus_alpha": (1.0 - alphas).astype(np.float32),
            "ig_weights": np.full((1, rows), 1.0 / rows, np.float32)}


def per_row(s, sizes, x):
    classes = s.get_inputs()[0].shape[1]
    outputs = ["ig_sums", "ig_abs_sums", s.get_outputs()[-1].name]
    inputs = {rows: feeds(x, rows, classes) for rows in sizes}
    for rows in sizes:
        for _ in range(3):
            s.run(outputs, inputs[rows])
    series = {rows: [] for rows in sizes}
    for _ in range(5):
        for rows in sizes:
            runs = max(1, 48 // rows)
            start = time.perf_counter()
            for _ in range(runs):
                s.run(outputs, inputs[rows])
            series[rows].append((time.perf_counter() - start) / (runs * rows) * 1e3)
    return {rows: statistics.median(v) for rows, v in series.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step_model")
    ap.add_argument("--rows", default="1,4,8,16")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sizes = [int(r) for r in args.rows.split(",")]
    x = np.load(os.path.join(REPO, "tests", "data", "coffee_input.npy")).astype(np.float32)[None]
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, ms per row (median of 5)")
    print("rows per run        " + "".join(f"{r:>8d}" for r in sizes))
    for label, spinning in [("threads sleeping", False), ("spinning during runs", True)]:
        got = per_row(session(args.step_model, args.threads, spinning), sizes, x)
        print(f"{label:20s}" + "".join(f"{got[r]:8.2f}" for r in sizes))


if __name__ == "__main__":
    main()
