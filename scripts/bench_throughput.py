#!/usr/bin/env python3
"""Explain throughput under concurrent load, with and without cross-request batching.

For each server mode (a label and the extra `integrad serve` flags it means; by default
`--batching off`, then `--batching on`) and each concurrency C (default 8 and 32), it starts
target/release/integrad serve with `--max-concurrent-explains C --max-queued-explains C`,
warms it up with one Explain, times one Explain alone (the solo latency), then fires C
Explains at once and measures the wall time from the first send to the last reply,
explanations per second and the p50 / p95 / max latency of each request (send to last event).

The requests are what a client sends: the real photos of samples/ as encoded image bytes
(the server decodes and preprocesses them), the demo model, probability objective, black
baseline, 50 trapezoid steps (51 gradient evaluations), and a different target class for
every request (and rotating photos), so that no two requests are the same work.

The mixed case (fairness), on the largest C's server: one 1000-step request (--long-steps)
is started and, as soon as it has reported its first progress event (so it is already
running), N 50-step requests (default C - 1, at most 7) are started together; the table
shows the 50-step latencies next to the solo latency, and the 1000-step request's own.

Any RPC error, or a reply that is not one explanation of the requested steps, stops the
script with a non-zero exit status: a throughput figure from failed requests is no figure.

    cargo build --release
    .venv-dev/bin/python scripts/bench_throughput.py [--concurrency 8,32] [--steps 50]
        [--mode off="--batching off" --mode on="--batching on"] [--intra-threads N]

`--mode LABEL=FLAGS` (or `--server-flags`; repeatable) replaces the default pair, e.g.
`--mode default=` runs the server as it is. It prints a table and, last, one line of JSON
with every figure.
"""

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import CHANNEL_OPTIONS, REPO, peak_rss_mb, server, stubs, wait_ready  # noqa: E402

PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg"]
DEFAULT_MODES = ["batching-off=--batching off", "batching-on=--batching on"]


class Failure(Exception):
    """An Explain that failed or answered something other than what was asked."""


def percentile(values, q):
    """The q-th percentile (0..100) with linear interpolation between the sorted values."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Client:
    def __init__(self, pb, rpc, address, steps):
        self.pb = pb
        self.stub = rpc.ExplainerStub(grpc.insecure_channel(address, options=CHANNEL_OPTIONS))
        self.steps = steps
        self.photos = []
        for name in PHOTOS:
            with open(os.path.join(REPO, "samples", name), "rb") as f:
                self.photos.append(f.read())
        self.counter = 0

    def request(self, steps):
        """The next request: the next photo, a class not asked for before in this run."""
        i = self.counter
        self.counter += 1
        pb = self.pb
        # 1000 classes; 389 is prime to 1000, so 1000 requests in a row get 1000 classes.
        target = (17 + 389 * i) % 1000
        return pb.ExplainRequest(
            input=pb.Input(image=self.photos[i % len(self.photos)]),
            target=pb.Target(class_index=target), objective=pb.OBJECTIVE_PROBABILITY,
            baseline=pb.Baseline(black=True), method=pb.METHOD_TRAPEZOID, steps=steps)

    def explain(self, request, started=None):
        """Seconds from sending `request` to its last event. `started` (an Event) is set on
        the first progress event."""
        t = time.perf_counter()
        results = []
        try:
            for event in self.stub.Explain(request, timeout=3600):
                kind = event.WhichOneof("event")
                if kind == "progress" and started is not None:
                    started.set()
                elif kind == "result":
                    results.append(event.result)
        except grpc.RpcError as e:
            raise Failure(f"Explain (target {request.target.class_index}, {request.steps} "
                          f"steps) failed: {e.code().name}: {e.details()}") from None
        elapsed = time.perf_counter() - t
        if len(results) != 1:
            raise Failure(f"Explain (target {request.target.class_index}) returned "
                          f"{len(results)} explanations, expected 1")
        r = results[0]
        if r.target_class != request.target.class_index or r.steps != request.steps:
            raise Failure(f"Explain asked for class {request.target.class_index} at "
                          f"{request.steps} steps, got class {r.target_class} at {r.steps}")
        return elapsed


def together(client, requests):
    """Runs `requests` at once, one thread each, released together; returns (wall seconds,
    latencies in request order). The first failure is raised after all threads end."""
    latencies = [None] * len(requests)
    errors = []
    gate = threading.Barrier(len(requests) + 1)

    def one(i):
        gate.wait()
        try:
            latencies[i] = client.explain(requests[i])
        except Failure as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall, latencies


def mixed(client, small, long_steps):
    """One `long_steps` request, running, then `small` requests of client.steps together."""
    started = threading.Event()
    long_result = {}

    def long_one():
        try:
            long_result["latency"] = client.explain(client.request(long_steps), started)
        except Failure as e:
            long_result["error"] = e
        started.set()  # a failure before any progress must not leave the wait hanging

    thread = threading.Thread(target=long_one)
    thread.start()
    started.wait()
    if "error" in long_result:
        thread.join()
        raise long_result["error"]
    _, latencies = together(client, [client.request(client.steps) for _ in range(small)])
    thread.join()
    if "error" in long_result:
        raise long_result["error"]
    return latencies, long_result["latency"]


def parse_modes(values):
    modes = []
    for value in values:
        label, sep, flags = value.partition("=")
        if not sep or not label:
            raise SystemExit(f"--mode {value!r}: expected LABEL=FLAGS, e.g. on='--batching on'")
        modes.append((label, shlex.split(flags)))
    return modes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", default="8,32",
                    help="comma-separated numbers of concurrent Explains (default 8,32)")
    ap.add_argument("--steps", type=int, default=50, help="steps per request (default 50)")
    ap.add_argument("--mode", "--server-flags", dest="mode", action="append",
                    metavar="LABEL=FLAGS",
                    help="a server mode: a label and the extra serve flags it means; "
                         "repeatable (default: batching-off='--batching off', "
                         "batching-on='--batching on')")
    ap.add_argument("--mixed-small", type=int, default=None,
                    help="50-step requests in the mixed case (default: largest C - 1, at "
                         "most 7; 0: skip the mixed case)")
    ap.add_argument("--long-steps", type=int, default=1000,
                    help="steps of the long request in the mixed case (default 1000)")
    ap.add_argument("--intra-threads", type=int, default=0,
                    help="--intra-threads for the server; 0: the server's default")
    ap.add_argument("--binary", default=os.path.join(REPO, "target", "release", "integrad"))
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not levels or min(levels) < 1:
        raise SystemExit("--concurrency: expected positive numbers, e.g. 8,32")
    modes = parse_modes(args.mode or DEFAULT_MODES)
    small = args.mixed_small if args.mixed_small is not None else min(max(levels) - 1, 7)
    if small + 1 > max(levels):
        raise SystemExit(f"--mixed-small {small}: the mixed case needs {small + 1} slots, "
                         f"more than the largest concurrency {max(levels)}")
    # NOTE: the server logs each request at INFO; keep our table readable unless asked.
    os.environ.setdefault("RUST_LOG", "warn")

    rows, mixed_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        pb, rpc = stubs(tmp)
        for label, flags in modes:
            for c in levels:
                serve = ["--models", os.path.join(REPO, "models"),
                         "--max-concurrent-explains", str(c), "--max-queued-explains", str(c),
                         *flags]
                if args.intra_threads:
                    serve += ["--intra-threads", str(args.intra_threads)]
                with server(serve, args.binary) as (address, process):
                    client = Client(pb, rpc, address, args.steps)
                    with open(os.path.join(REPO, "samples", PHOTOS[0]), "rb") as f:
                        ready = pb.PredictRequest(input=pb.Input(image=f.read()))
                    wait_ready(client.stub, ready, process)
                    client.explain(client.request(args.steps))  # warm-up
                    solo = client.explain(client.request(args.steps))
                    print(f"[{label}] C={c}: {c} Explains of {args.steps} steps at once...",
                          file=sys.stderr, flush=True)
                    wall, latencies = together(
                        client, [client.request(args.steps) for _ in range(c)])
                    rows.append({
                        "mode": label, "flags": flags, "concurrency": c, "steps": args.steps,
                        "solo_s": solo, "wall_s": wall, "explanations_per_s": c / wall,
                        "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95),
                        "max_s": max(latencies), "peak_rss_mb": peak_rss_mb(process)})
                    if c == max(levels) and small > 0:
                        print(f"[{label}] mixed: one {args.long_steps}-step Explain, then {small} "
                              f"of {args.steps} steps...", file=sys.stderr, flush=True)
                        short, long_latency = mixed(client, small, args.long_steps)
                        mixed_rows.append({
                            "mode": label, "flags": flags, "small": small,
                            "steps": args.steps, "long_steps": args.long_steps, "solo_s": solo,
                            "p50_s": percentile(short, 50), "p95_s": percentile(short, 95),
                            "max_s": max(short), "long_s": long_latency})

    print(f"\nExplain throughput, demo model, {args.steps} steps, photos as image bytes, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'mode':<16} {'C':>4} {'solo s':>8} {'wall s':>8} {'expl/s':>8} {'p50 s':>8} "
          f"{'p95 s':>8} {'max s':>8} {'peak MB':>8}")
    for r in rows:
        rss = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] is not None else "-"
        print(f"{r['mode']:<16} {r['concurrency']:>4} {r['solo_s']:>8.2f} {r['wall_s']:>8.2f} "
              f"{r['explanations_per_s']:>8.2f} {r['p50_s']:>8.2f} {r['p95_s']:>8.2f} "
              f"{r['max_s']:>8.2f} {rss:>8}")
    if mixed_rows:
        print(f"\nFairness: one {args.long_steps}-step Explain running, then N of {args.steps} "
              "steps started together")
        print(f"{'mode':<16} {'N':>4} {'solo s':>8} {'p50 s':>8} {'p95 s':>8} {'max s':>8} "
              f"{'long s':>8}")
        for r in mixed_rows:
            print(f"{r['mode']:<16} {r['small']:>4} {r['solo_s']:>8.2f} {r['p50_s']:>8.2f} "
                  f"{r['p95_s']:>8.2f} {r['max_s']:>8.2f} {r['long_s']:>8.2f}")
    print(json.dumps({"load_average": os.getloadavg()[0], "throughput": rows,
                      "mixed": mixed_rows}))


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        raise SystemExit(f"bench_throughput: {e}")
