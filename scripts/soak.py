#!/usr/bin/env python3
"""Soak and load test: mixed traffic from many clients against the release server for a long
time, watching the server process for leaks.

It starts target/release/integrad serve on loopback with the demo models (models/) and small
Explain admission limits (--max-concurrent-explains, --max-queued-explains), so that the
clients overrun them on purpose, then runs CLIENTS threads, each on its own channel, for
--duration seconds. Each thread loops over a weighted random mix of calls (fixed seed):

    predict-tabular / predict-text / predict-image    Predict on penguins, sentiment, the photos
    explain-tabular / explain-text / explain-image    Explain (4 to 32 steps)
    explain-batch                                     ExplainBatch of 8 penguin rows
    cancel                                            an image Explain of 256 steps, cancelled
                                                      by the client after its first event
    deadline                                          an image Explain of 256 steps with a
                                                      0.3 s deadline

Every reply is checked (a Predict's top classes, one explanation per target, the steps
asked), and every error is counted by status. The only errors allowed are those the script
causes itself: RESOURCE_EXHAUSTED on Explain and ExplainBatch (the admission limits); the
cancel and deadline calls succeed when they end in CANCELLED and DEADLINE_EXCEEDED (their
latency is the time to that status; a deadline that passes before the server has started its
answer is reported by tonic as CANCELLED "Timeout expired", which counts as the deadline).
Anything else fails the run.

A sampler reads the server's /proc/PID/status (VmRSS, Threads) and /proc/PID/fd every 5 s.
After a warm-up (one call of each kind, then 10 s of load), and again after the load has
stopped, the server is left idle until its connections have closed and tokio's idle blocking
threads have exited (10 s): the open fds and threads of those two idle moments are compared.

Pass criteria (printed, and the exit status):
- no error other than the allowed ones; at least one successful call of every kind;
- memory: the mean RSS of the last third of the run (minutes 20-30 of 30) within 5 % of the
  mean RSS of its sixth to third (minutes 5-10): the windows scale with --duration;
- no fd or thread growth: the idle counts after the run are at most those before it.

    cargo build --release
    .venv-dev/bin/python scripts/soak.py [--duration 1800] [--clients 12] [--json FILE]

It prints the RSS per minute, p50/p99 latency and throughput per call kind, errors by status,
and last one line of JSON with every figure.
"""

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import CHANNEL_OPTIONS, REPO, server, stubs, wait_ready  # noqa: E402

PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg"]
TEXTS = ["a gripping, beautifully shot film", "dull and far too long",
         "the acting was fine but the plot made no sense", "I loved every minute of it"]
# (kind, weight): mostly cheap calls, so that the run stresses the request paths (admission,
# streaming, cancellation, the workers' queues) more than the CPU.
MIX = [("predict-tabular", 6), ("predict-text", 4), ("predict-image", 2),
       ("explain-tabular", 5), ("explain-text", 3), ("explain-image", 1),
       ("explain-batch", 3), ("cancel", 1), ("deadline", 1)]
# Errors the script causes on purpose, per call kind.
ALLOWED = {kind: {"RESOURCE_EXHAUSTED"} for kind, _ in MIX if not kind.startswith("predict")}
# The status that is the intended outcome of a call (counted as a success, with its latency).
INTENDED = {"cancel": "CANCELLED", "deadline": "DEADLINE_EXCEEDED"}
# NOTE: a deadline that passes before the server has started its answer (while the call waits
# for admission, say) is ended by tonic's own grpc-timeout handling, which says CANCELLED with
# this message rather than DEADLINE_EXCEEDED: still the deadline the client set.
TONIC_TIMEOUT = "Timeout expired"
SAMPLE_S = 5
RSS_TOLERANCE = 0.05
# tokio lets an idle blocking thread go after 10 s; connections close within moments.
SETTLE_S = 12


class Mismatch(Exception):
    """A reply that is not what was asked for."""


def percentile(values, q):
    s = sorted(values)
    if not s:
        return None
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def proc_status(pid):
    """(RSS in MB, threads, open fds) of process `pid`, from /proc."""
    rss = threads = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads, len(os.listdir(f"/proc/{pid}/fd"))


def penguin_rows():
    with open(os.path.join(REPO, "models", "penguins", "rows.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


class Traffic:
    """The requests of each call kind, and how to check their replies."""

    def __init__(self, pb):
        self.pb = pb
        self.rows = penguin_rows()
        self.photos = []
        for name in PHOTOS:
            with open(os.path.join(REPO, "samples", name), "rb") as f:
                self.photos.append(f.read())

    def row(self, rng):
        values = {k: float(v) for k, v in rng.choice(self.rows).items()}
        return self.pb.Input(features=self.pb.FeatureRow(values=values))

    def image(self, rng):
        return self.pb.Input(image=rng.choice(self.photos))

    def text(self, rng):
        return self.pb.Input(text=self.pb.Text(text=rng.choice(TEXTS)))

    def call(self, stub, kind, rng):
        """Makes one call of `kind`; raises grpc.RpcError or Mismatch."""
        pb = self.pb
        if kind.startswith("predict"):
            model, given = {"predict-tabular": ("penguins", self.row),
                            "predict-text": ("sentiment", self.text),
                            "predict-image": ("efficientnet-lite0", self.image)}[kind]
            reply = stub.Predict(pb.PredictRequest(model=model, input=given(rng), top_k=2),
                                 timeout=120)
            if len(reply.top) != 2:
                raise Mismatch(f"{kind}: {len(reply.top)} classes, asked for 2")
            return
        if kind == "explain-batch":
            instances = [pb.Instance(input=self.row(rng)) for _ in range(8)]
            request = pb.ExplainBatchRequest(
                request=pb.ExplainRequest(model="penguins", steps=16,
                                          target=pb.Target(class_index=rng.randrange(3))),
                instances=instances)
            results = self.results(stub.ExplainBatch(request, timeout=300))
            if sorted(r.instance for r in results) != list(range(8)):
                raise Mismatch(f"explain-batch: instances {[r.instance for r in results]}")
            return
        if kind in ("cancel", "deadline"):
            request = pb.ExplainRequest(model="efficientnet-lite0", input=self.image(rng),
                                        steps=256, target=pb.Target(class_index=0))
            if kind == "deadline":
                self.results(stub.Explain(request, timeout=0.3))
                raise Mismatch("deadline: 256 image steps finished within 0.3 s")
            call = stub.Explain(request, timeout=300)
            next(call)  # the first event: the work has started
            call.cancel()
            for _ in call:
                pass
            raise Mismatch("cancel: the stream went on after cancel()")
        model, given, steps, classes = {
            "explain-tabular": ("penguins", self.row, 32, 3),
            "explain-text": ("sentiment", self.text, 16, 2),
            "explain-image": ("efficientnet-lite0", self.image, 4, 1000)}[kind]
        target = rng.randrange(classes)
        request = pb.ExplainRequest(model=model, input=given(rng), steps=steps,
                                    target=pb.Target(class_index=target))
        results = self.results(stub.Explain(request, timeout=300))
        if len(results) != 1 or results[0].target_class != target or results[0].steps != steps:
            raise Mismatch(f"{kind}: asked for class {target} at {steps} steps, got "
                           f"{[(r.target_class, r.steps) for r in results]}")

    @staticmethod
    def results(stream):
        out = []
        for event in stream:
            kind = event.WhichOneof("event")
            if kind == "result":
                out.append(event.result)
            elif kind == "results":
                out.extend(event.results.explanations)
        return out


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency = {kind: [] for kind, _ in MIX}
        self.errors = {}  # (kind, status) -> count
        self.unexpected = []  # the first few unexpected errors, in words

    def ok(self, kind, seconds):
        with self.lock:
            self.latency[kind].append(seconds)

    def error(self, kind, status, details):
        with self.lock:
            self.errors[(kind, status)] = self.errors.get((kind, status), 0) + 1
            if status not in ALLOWED.get(kind, set()) and len(self.unexpected) < 20:
                self.unexpected.append(f"{kind}: {status}: {details}")


def client_loop(seed, address, rpc, traffic, stats, stop):
    rng = random.Random(seed)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = rpc.ExplainerStub(channel)
        while not stop.is_set():
            kind = rng.choices(kinds, weights)[0]
            t = time.perf_counter()
            try:
                traffic.call(stub, kind, rng)
                stats.ok(kind, time.perf_counter() - t)
            except grpc.RpcError as e:
                status = e.code().name
                if kind == "deadline" and status == "CANCELLED" and e.details() == TONIC_TIMEOUT:
                    status = "DEADLINE_EXCEEDED"
                if INTENDED.get(kind) == status:
                    stats.ok(kind, time.perf_counter() - t)
                    continue
                stats.error(kind, status, e.details())
                if status == "RESOURCE_EXHAUSTED":
                    stop.wait(0.05 + rng.random() * 0.2)  # as a client told to retry would
            except Mismatch as e:
                stats.error(kind, "WRONG_REPLY", str(e))


class Sampler(threading.Thread):
    """Samples the server's RSS, threads and fds every SAMPLE_S seconds while it runs."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.samples = []  # (seconds since the load began, rss MB, threads, fds)
        self.t0 = None
        self.halt = threading.Event()

    def run(self):
        while not self.halt.wait(SAMPLE_S):
            self.samples.append((time.monotonic() - self.t0, *proc_status(self.pid)))


def settle(pid, baseline=None):
    """The server's (threads, fds) once idle: sampled for SETTLE_S seconds, then until they
    are at most `baseline`'s, for at most 3 x SETTLE_S more; the last sample."""
    time.sleep(SETTLE_S)
    end = time.monotonic() + 3 * SETTLE_S
    while True:
        _, threads, fds = proc_status(pid)
        fits = baseline is None or (threads <= baseline[0] and fds <= baseline[1])
        if fits or time.monotonic() > end:
            return threads, fds
        time.sleep(1)


def mean(values):
    return sum(values) / len(values) if values else None


def run(args):
    os.environ.setdefault("RUST_LOG", "warn")
    with tempfile.TemporaryDirectory() as tmp:
        pb, rpc = stubs(tmp)
        traffic = Traffic(pb)
        serve = ["--models", os.path.join(REPO, "models"),
                 "--max-concurrent-explains", str(args.max_concurrent_explains),
                 "--max-queued-explains", str(args.max_queued_explains), *args.server_flag]
        with server(serve, args.binary) as (address, process):
            with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
                stub = rpc.ExplainerStub(channel)
                wait_ready(stub, pb.PredictRequest(model="penguins",
                                                   input=traffic.row(random.Random(0))),
                           process)
                # Warm-up: every kind once (the first Explain of each model pays ONNX
                # Runtime's first runs), then a short load below.
                warm = Stats()
                for kind, _ in MIX:
                    try:
                        traffic.call(stub, kind, random.Random(1))
                    except (grpc.RpcError, Mismatch):
                        pass  # cancel and deadline end in errors by design
            stop = threading.Event()
            threads = [threading.Thread(target=client_loop,
                                        args=(1000 + i, address, rpc, traffic, warm, stop))
                       for i in range(args.clients)]
            for t in threads:
                t.start()
            time.sleep(10)
            stop.set()
            for t in threads:
                t.join()
            idle_start = settle(process.pid)
            print(f"soak: {args.clients} clients for {args.duration:.0f} s; idle before: "
                  f"{idle_start[0]} threads, {idle_start[1]} fds", file=sys.stderr, flush=True)

            stats = Stats()
            sampler = Sampler(process.pid)
            stop = threading.Event()
            threads = [threading.Thread(target=client_loop,
                                        args=(i, address, rpc, traffic, stats, stop))
                       for i in range(args.clients)]
            sampler.t0 = time.monotonic()
            start_sample = (0.0, *proc_status(process.pid))
            sampler.start()
            for t in threads:
                t.start()
            stop.wait(args.duration)
            stop.set()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - sampler.t0
            sampler.halt.set()
            sampler.join()
            end_sample = (elapsed, *proc_status(process.pid))
            idle_end = settle(process.pid, idle_start)
            if process.poll() is not None:
                raise SystemExit(f"soak: the server exited with status {process.returncode}")
    return report(args, stats, [start_sample, *sampler.samples, end_sample], elapsed,
                  idle_start, idle_end)


def report(args, stats, samples, elapsed, idle_start, idle_end):
    d = args.duration
    # Minutes 5-10 and 20-30 of a 30-minute run, scaled.
    early = [s[1] for s in samples if d / 6 <= s[0] <= d / 3]
    late = [s[1] for s in samples if s[0] >= 2 * d / 3]
    early_rss, late_rss = mean(early), mean(late)
    drift = (late_rss - early_rss) / early_rss if early_rss and late_rss else None
    minute = 60 if d >= 600 else max(d / 10, 1)
    per_minute = []
    for m in range(int(elapsed // minute) + 1):
        rss = [s[1] for s in samples if m * minute <= s[0] < (m + 1) * minute]
        if rss:
            per_minute.append(round(max(rss), 1))

    kinds = {}
    total = 0
    for kind, _ in MIX:
        lat = stats.latency[kind]
        total += len(lat)
        kinds[kind] = {"ok": len(lat), "per_s": len(lat) / elapsed,
                       "p50_ms": percentile(lat, 50) and percentile(lat, 50) * 1000,
                       "p99_ms": percentile(lat, 99) and percentile(lat, 99) * 1000}
    errors = {f"{k} {s}": n for (k, s), n in sorted(stats.errors.items())}
    unexpected = sum(n for (k, s), n in stats.errors.items() if s not in ALLOWED.get(k, set()))
    missing = [k for k, v in kinds.items() if v["ok"] == 0]

    checks = {
        "no unexpected errors": unexpected == 0,
        "every kind succeeded at least once": not missing,
        f"RSS of the last third within {RSS_TOLERANCE:.0%} of its sixth to third":
            drift is not None and abs(drift) <= RSS_TOLERANCE,
        "no thread growth (idle after <= idle before)": idle_end[0] <= idle_start[0],
        "no fd growth (idle after <= idle before)": idle_end[1] <= idle_start[1],
    }

    unit = "minute" if minute == 60 else f"{minute:.0f} s"
    print(f"\nSoak: {args.clients} clients, {elapsed:.0f} s, load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'call':<16} {'ok':>7} {'per s':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for kind, v in kinds.items():
        p50 = f"{v['p50_ms']:.0f}" if v["p50_ms"] is not None else "-"
        p99 = f"{v['p99_ms']:.0f}" if v["p99_ms"] is not None else "-"
        print(f"{kind:<16} {v['ok']:>7} {v['per_s']:>7.2f} {p50:>8} {p99:>8}")
    print(f"{'all':<16} {total:>7} {total / elapsed:>7.2f}")
    print("errors by status: " + (", ".join(f"{k}: {n}" for k, n in errors.items()) or "none"))
    for line in stats.unexpected:
        print(f"  unexpected: {line}")
    print(f"RSS MB per {unit} (max of its samples): {per_minute}")
    print(f"RSS mean {early_rss and round(early_rss, 1)} MB early, {late_rss and round(late_rss, 1)}"
          f" MB late: drift {drift if drift is None else f'{drift:+.2%}'}")
    print(f"threads: {samples[0][2]} at start, {samples[-1][2]} at end under load; idle "
          f"{idle_start[0]} before, {idle_end[0]} after")
    print(f"fds: {samples[0][3]} at start, {samples[-1][3]} at end under load; idle "
          f"{idle_start[1]} before, {idle_end[1]} after")
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    figures = {"clients": args.clients, "duration_s": elapsed, "calls": kinds,
               "errors": errors, "unexpected": stats.unexpected, "rss_mb_per_minute": per_minute,
               "rss_unit_s": minute, "rss_early_mb": early_rss, "rss_late_mb": late_rss,
               "rss_drift": drift,
               "threads": {"start": samples[0][2], "end": samples[-1][2],
                           "idle_before": idle_start[0], "idle_after": idle_end[0]},
               "fds": {"start": samples[0][3], "end": samples[-1][3],
                       "idle_before": idle_start[1], "idle_after": idle_end[1]},
               "checks": checks, "passed": all(checks.values()),
               "load_average": os.getloadavg()[0]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    print(json.dumps(figures))
    return all(checks.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=1800,
                    help="seconds of load after the warm-up (default 1800: 30 minutes)")
    ap.add_argument("--clients", type=int, default=12, help="concurrent clients (default 12)")
    ap.add_argument("--max-concurrent-explains", type=int, default=2)
    ap.add_argument("--max-queued-explains", type=int, default=4)
    ap.add_argument("--server-flag", action="append", default=[],
                    help="an extra `integrad serve` argument (repeatable)")
    ap.add_argument("--binary", default=os.path.join(REPO, "target", "release", "integrad"))
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    if args.duration < 30 or args.clients < 1:
        raise SystemExit("--duration: at least 30 s; --clients: at least 1")
    sys.exit(0 if run(args) else 1)


if __name__ == "__main__":
    main()
