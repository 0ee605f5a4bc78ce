#!/usr/bin/env python3
"""Time one ExplainBatch of 1,000 penguin rows against Captum's IntegratedGradients, side by side.

The workload (the Tabular: ExplainBatch vs Captum benchmark): the penguins demo model
(models/penguins: `numeric` float32 [b, 4] and `categorical` int64 [b, 2] looked up in one
embedding table, `logits` [b, 3]), --rows rows (1,000) drawn with replacement, with a fixed
seed, from the data set's 333 rows (reference.csv, the training split, and rows.csv, the
test split), the same rows for both sides; target the top-1 class of each row, PROBABILITY
objective (softmax of the logits, the server's default for a classifier), 50 trapezoid steps
= 51 gradient evaluations per row, baselines the model's defaults: the median of
reference.csv for `numeric` and the zero vector at the embedding's output.

integrad: `integrad serve --intra-threads THREADS --max-instances max(ROWS, 1024)`, ONE ExplainBatch call
carrying every row as a FeatureRow instance (feature name -> value); the time is from sending
the request to the last Explanation; rows per second = rows / that time. Two ways of
receiving are timed: `results_per_event` --results-per-event (default: all rows; the
Explanations completed by one gradient run then travel in one event), and 0 (each Explanation
its own event, the default of the API; a Python gRPC client spends about 20-30 us per
message).

Captum: IntegratedGradients on the same function, taken at the two tensors integrad
attributes to: the `numeric` input and the embedding's output (the lookup done once, before
attribution, as Captum's own recipe for embeddings, configure_interpretable_embedding_layer,
does), forward = softmax(head(numeric, embedded)); baselines the same median and zeros;
`method="riemann_trapezoid", n_steps=51`; float32; torch.set_num_threads(THREADS). The time
includes the forward that finds each row's top-1 class (the server does the same). How the
1,000 rows are fed to Captum is chosen for speed before the timed runs: CHUNK rows per
`attribute` call with all their 51 alphas in one batch (internal_batch_size = CHUNK x 51),
for each CHUNK of --captum-chunks, plus the whole batch with internal_batch_size 1000 x k
(k alphas per pass) for each k of --captum-alphas; each is timed --probe times and the
fastest median is the Captum side of the comparison. (Captum's other recipe for
embeddings, LayerIntegratedGradients on the embedding layer, takes its baseline as ids, so it
cannot give the zero vector at the embedding's output that integrad uses here.)

The PyTorch model is scripts/make_tabular_fixtures.py's `Penguins` module with the ONNX
file's initializers loaded into it (so it is exactly models/penguins/model.onnx), checked
against onnxruntime on the rows before anything is timed.

Agreement: on the first --check rows, integrad's per-feature attributions (4 measurements,
and each categorical column's embedding attribution summed over its 3 dimensions) against
Captum's, times 51/50 (Captum's riemann_trapezoid weights sum to 50/51); relative L2 per row
must be under 1e-3, or the script fails.

Runs alternate (ExplainBatch, Captum, ExplainBatch, ...) after one warm-up each, every timed
run after a --settle pause; medians are printed with the ratio of rows per second.

    cargo build --release
    .venv-dev/bin/python scripts/bench_tabular_vs_captum.py [--runs 5] [--threads 2]
        [--rows 1000] [--steps 50] [--batch-size N] [--captum-chunks 8,16,32,64,1000]
        [--captum-alphas 1,3,17] [--probe 2] [--captum-threads N] [--binary PATH]
        [--url http://HOST:PORT]

Without --url it starts target/release/integrad serve (or --binary) on a free loopback port
and stops it at the end. Needs the dev virtualenv (scripts/requirements-dev.txt).
"""

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import torch
from captum.attr import IntegratedGradients
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import BINARY, CHANNEL_OPTIONS, REPO, server, stubs, wait_ready  # noqa: E402
from make_tabular_fixtures import CATEGORICAL, NUMERIC, Penguins  # noqa: E402

MODEL = "penguins"
MODEL_DIR = os.path.join(REPO, "models", MODEL)
FEATURES = NUMERIC + CATEGORICAL
SEED = 0
TOL = 1e-3


def read_rows(path):
    """(numeric float64 [n, 4], categorical int64 [n, 2]) of a penguins CSV."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    num = np.array([[float(r[c]) for c in NUMERIC] for r in rows], dtype=np.float64)
    cat = np.array([[int(r[c]) for c in CATEGORICAL] for r in rows], dtype=np.int64)
    return num, cat


def torch_model():
    """make_tabular_fixtures.Penguins with models/penguins/model.onnx's initializers."""
    m = onnx.load(os.path.join(MODEL_DIR, "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    # The Sub's and the Div's constants, by the graph's own nodes (names may vary).
    sub = next(n for n in m.graph.node if n.op_type == "Sub")
    div = next(n for n in m.graph.node if n.op_type == "Div")
    mean, std = inits[sub.input[1]], inits[div.input[1]]
    model = Penguins(mean.copy(), std.copy())
    gemms = [n for n in m.graph.node if n.op_type == "Gemm"]
    gather = next(n for n in m.graph.node if n.op_type == "Gather")
    for gemm in gemms:
        assert [a.i for a in gemm.attribute if a.name == "transB"] == [1], gemm
    state = {
        "mean": torch.from_numpy(mean.copy()), "std": torch.from_numpy(std.copy()),
        "offsets": torch.tensor([0, 3], dtype=torch.int64),
        "embedding.weight": torch.from_numpy(inits[gather.input[0]].copy()),
        "mlp.0.weight": torch.from_numpy(inits[gemms[0].input[1]].copy()),
        "mlp.0.bias": torch.from_numpy(inits[gemms[0].input[2]].copy()),
        "mlp.2.weight": torch.from_numpy(inits[gemms[1].input[1]].copy()),
        "mlp.2.bias": torch.from_numpy(inits[gemms[1].input[2]].copy()),
    }
    model.load_state_dict(state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running server; default: start --binary serve")
    ap.add_argument("--binary", default=BINARY, help="the integrad binary to serve with")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--captum-threads", type=int, default=0,
                    help="torch.set_num_threads for Captum alone (a side check; 0: --threads)")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=0,
                    help="ExplainRequest.batch_size (alphas per gradient run); 0: the server's")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds to pause before each timed run (0: none)")
    ap.add_argument("--captum-chunks", default="8,16,32,64,1000",
                    help="rows per Captum attribute() call, all alphas in one pass; each tried")
    ap.add_argument("--captum-alphas", default="1,3,17",
                    help="whole batch, alphas per pass (internal_batch_size = rows x k); "
                         "each tried")
    ap.add_argument("--probe", type=int, default=2,
                    help="timed runs of each Captum configuration when choosing the fastest")
    ap.add_argument("--check", type=int, default=16, help="rows checked for agreement")
    ap.add_argument("--results-per-event", type=int, default=0,
                    help="ExplainBatchRequest.results_per_event of the grouped runs "
                         "(0: --rows)")
    args = ap.parse_args()
    torch.set_num_threads(args.captum_threads or args.threads)

    num_all, cat_all = [np.concatenate(p) for p in zip(
        read_rows(os.path.join(MODEL_DIR, "reference.csv")),
        read_rows(os.path.join(MODEL_DIR, "rows.csv")))]
    pick = np.random.default_rng(SEED).integers(0, len(num_all), size=args.rows)
    num, cat = num_all[pick], cat_all[pick]
    median = np.median(read_rows(os.path.join(MODEL_DIR, "reference.csv"))[0]
                       .astype(np.float32), axis=0).astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        pb, rpc = stubs(tmp)
        if args.url:
            run(args, pb, rpc, args.url.split("://", 1)[-1], num, cat, median)
        else:
            flags = ["--intra-threads", str(args.threads), "--models",
                     os.path.join(REPO, "models"), "--max-instances", str(max(args.rows, 1024))]
            with server(flags, binary=args.binary) as (address, process):
                run(args, pb, rpc, address, num, cat, median, process)


def run(args, pb, rpc, target, num, cat, median, process=None):
    channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    stub = rpc.ExplainerStub(channel)

    def features(i):
        values = {n: float(num[i, j]) for j, n in enumerate(NUMERIC)}
        values.update({n: float(cat[i, j]) for j, n in enumerate(CATEGORICAL)})
        return pb.Input(features=pb.FeatureRow(values=values))

    wait_ready(stub, pb.PredictRequest(model=MODEL, input=features(0)), process)
    instances = [pb.Instance(input=features(i)) for i in range(len(num))]
    per_event = args.results_per_event or len(num)

    def batch_request(per_event):
        return pb.ExplainBatchRequest(
            request=pb.ExplainRequest(model=MODEL, method=pb.METHOD_TRAPEZOID,
                                      steps=args.steps, batch_size=args.batch_size),
            instances=instances, results_per_event=per_event)

    requests = {per_event: batch_request(per_event), 0: batch_request(0)}

    def explain_batch(per_event=per_event):
        t = time.perf_counter()
        results, progress = {}, 0
        for event in stub.ExplainBatch(requests[per_event], timeout=3600):
            kind = event.WhichOneof("event")
            if kind == "result":
                results[event.result.instance] = event.result
            elif kind == "results":
                for r in event.results.explanations:
                    results[r.instance] = r
            elif kind == "progress":
                progress += 1
        elapsed = time.perf_counter() - t
        if len(results) != len(num):
            raise SystemExit(f"ExplainBatch returned {len(results)} of {len(num)} explanations")
        return elapsed, results, progress

    # ---- the PyTorch side ----------------------------------------------------------------
    model = torch_model()
    x_num = torch.from_numpy(num.astype(np.float32))
    x_cat = torch.from_numpy(cat)
    sess = ort.InferenceSession(os.path.join(MODEL_DIR, "model.onnx"),
                                providers=["CPUExecutionProvider"])
    want = sess.run(["logits"], {"numeric": num.astype(np.float32), "categorical": cat})[0]
    with torch.no_grad():
        got = model(x_num, x_cat).numpy()
    err = float(np.abs(got - want).max())
    assert err < 1e-4, f"the torch model differs from model.onnx by {err}"
    b_num_row = torch.from_numpy(median)[None]
    n_steps = args.steps + 1  # riemann_trapezoid n_steps counts alphas
    forward = lambda n, e: torch.softmax(model.head(n, e), dim=1)  # noqa: E731
    ig = IntegratedGradients(forward)
    def captum_chunk(n, c, internal):
        """Per-feature attributions [rows, 6] of rows (n, c), Captum riemann_trapezoid."""
        with torch.no_grad():
            tgt = model(n, c).argmax(1)
        b_num = b_num_row.expand_as(n)
        e = model.embedding(c + model.offsets)
        a_num, a_emb = ig.attribute((n, e), baselines=(b_num, torch.zeros_like(e)),
                                    target=tgt, n_steps=n_steps, method="riemann_trapezoid",
                                    internal_batch_size=internal)
        a = torch.cat([a_num, a_emb.sum(2)], dim=1) * (n_steps / (n_steps - 1))
        return a.detach()

    def captum(config):
        kind, k = config
        t = time.perf_counter()
        if kind == "chunk":
            out = [captum_chunk(x_num[s:s + k], x_cat[s:s + k], k * n_steps)
                   for s in range(0, len(num), k)]
            a = torch.cat(out)
        else:
            a = captum_chunk(x_num, x_cat, len(num) * k)
        return time.perf_counter() - t, a

    # ---- warm-up, agreement --------------------------------------------------------------
    t0, results, progress = explain_batch()
    print(f"warm-up ExplainBatch: {t0:.3f} s, {progress} progress events", flush=True)
    first = results[0]
    print(f"  row 0: target {first.target_class} {first.label}, evaluations "
          f"{first.evaluations}, steps {first.steps}, delta {first.convergence_delta:+.2e}, "
          f"features " + ", ".join(f"{f.name}={f.value:g} (baseline {f.baseline:g}): "
                                    f"{f.attribution:+.4f}" for f in first.features))
    ours = np.array([[{f.name: f.attribution for f in results[i].features}[n]
                      for n in FEATURES] for i in range(len(num))], dtype=np.float64)
    base = np.array([[f.baseline for f in results[0].features if f.name == n][0]
                     for n in NUMERIC])
    if not np.allclose(base, median.astype(np.float64)):
        raise SystemExit(f"the server's numeric baseline {base} is not the median {median}")
    with torch.no_grad():
        top = model(x_num, x_cat).argmax(1).numpy()
    targets = np.array([results[i].target_class for i in range(len(num))])
    if not np.array_equal(top, targets):
        raise SystemExit(f"{int((top != targets).sum())} rows' top-1 classes differ")
    nc = min(args.check, len(num))
    ref = captum_chunk(x_num[:nc], x_cat[:nc], None).double().numpy()
    rel = np.linalg.norm(ours[:nc] - ref, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"agreement on the first {nc} rows (per-feature attributions, Captum x 51/50): "
          f"relative L2 max {rel.max():.2e}, median {np.median(rel):.2e}", flush=True)
    if rel.max() >= TOL:
        raise SystemExit(f"integrad and Captum disagree: relative L2 {rel.max():.2e} >= {TOL}")

    # ---- choose Captum's fastest feeding -------------------------------------------------
    configs = [("chunk", int(k)) for k in args.captum_chunks.split(",") if k.strip()]
    configs += [("alphas", int(k)) for k in args.captum_alphas.split(",") if k.strip()]
    probe = {}
    for config in configs:
        captum(config)  # warm-up
        times = []
        for _ in range(args.probe):
            time.sleep(args.settle)
            times.append(captum(config)[0])
        probe[config] = statistics.median(times)
        print(f"Captum {describe(config, n_steps, len(num))}: {probe[config]:.3f} s "
              f"({len(num) / probe[config]:.0f} rows/s)", flush=True)
    best = min(probe, key=probe.get)
    _, a_best = captum(best)
    rel_all = np.linalg.norm(ours - a_best.double().numpy(), axis=1) / np.linalg.norm(
        a_best.double().numpy(), axis=1)
    print(f"fastest: {describe(best, n_steps, len(num))}; its attributions of all "
          f"{len(num)} rows vs integrad: relative L2 max {rel_all.max():.2e}", flush=True)

    # ---- alternate -----------------------------------------------------------------------
    explain_batch(0)  # warm-up, one result per event
    e_times, o_times, c_times = [], [], []
    for i in range(args.runs):
        time.sleep(args.settle)
        t, _, _ = explain_batch()
        e_times.append(t)
        time.sleep(args.settle)
        o, _, _ = explain_batch(0)
        o_times.append(o)
        time.sleep(args.settle)
        c, _ = captum(best)
        c_times.append(c)
        print(f"run {i + 1}: ExplainBatch {t:.3f} s ({len(num) / t:.0f} rows/s), one result "
              f"per event {o:.3f} s ({len(num) / o:.0f} rows/s), Captum "
              f"{c:.3f} s ({len(num) / c:.0f} rows/s)", flush=True)

    e, o, c = (statistics.median(x) for x in (e_times, o_times, c_times))
    rows = len(num)
    print(f"\nthreads {args.threads} (server --intra-threads), torch.set_num_threads "
          f"{torch.get_num_threads()}, "
          f"{args.runs} alternating runs, {rows} rows, {args.steps} trapezoid steps "
          f"({n_steps} alphas per row), batch_size {args.batch_size or 'server default'}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"  integrad ExplainBatch (one call, {rows} instances, results_per_event "
          f"{per_event}): median {e:.3f} s ({min(e_times):.3f} - {max(e_times):.3f}), "
          f"{rows / e:.0f} rows/s")
    print(f"  the same, one result per event: median {o:.3f} s ({min(o_times):.3f} - "
          f"{max(o_times):.3f}), {rows / o:.0f} rows/s, ratio to Captum {c / o:.2f}")
    print(f"  Captum IG ({describe(best, n_steps, rows)}): median {c:.3f} s "
          f"({min(c_times):.3f} - {max(c_times):.3f}), {rows / c:.0f} rows/s")
    print(f"  ratio integrad rows/s / Captum rows/s: {c / e:.2f} (goal: at least 10)")
    print(f"  ExplainBatch progress events per call: {progress}")


def describe(config, n_steps, rows):
    kind, k = config
    if kind == "chunk":
        return (f"{k} rows per attribute() call, internal_batch_size {k} x {n_steps} = "
                f"{k * n_steps}")
    return f"whole batch, internal_batch_size {rows} x {k} = {rows * k} ({k} alphas per pass)"


if __name__ == "__main__":
    main()
