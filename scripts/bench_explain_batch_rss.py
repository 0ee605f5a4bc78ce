#!/usr/bin/env python3
"""Peak memory of `integrad explain-batch` over 1,000 and 100,000 rows, against one server.

The workload (the explain-batch memory benchmark): the penguins demo model's 84 test rows
(models/penguins/rows.jsonl) repeated into two JSON-lines files, --small rows (1,000) and
--large rows (100,000); one `integrad serve --intra-threads THREADS` for both; for each file
`integrad explain-batch --server URL --model penguins --input FILE --out OUT --steps STEPS
[--chunk N]` (defaults: 50 trapezoid steps, the CLI's default chunk of rows per ExplainBatch
call, the model's default baselines, the top-1 target). The small file runs first.

Measured per run: the CLI process's peak resident memory ("Maximum resident set size" of
`/usr/bin/time -v`, which runs it; polled VmRSS/VmHWM from /proc as a cross-check), its
wall time and rows per second, the output's lines (one per row, checked) and bytes; and the
server's resident memory (VmRSS) before and after each run and its peak (VmHWM) so far.
The figure that matters is the CLI's peak at 100,000 rows over its peak at 1,000 (goal: at
most 1.3x: the CLI streams the rows in chunks and writes each result as it comes, so its
memory must not grow with the file); the server's VmRSS after the large run against after the
small one says the same of the server.

    cargo build --release
    .venv-dev/bin/python scripts/bench_explain_batch_rss.py [--large 100000] [--small 1000]
        [--steps 50] [--chunk N] [--threads 2] [--binary PATH] [--keep DIR]

It writes the inputs and outputs in a temporary directory (the 100,000-row output is about
0.6 GB) and deletes them at the end, unless --keep DIR names where to leave them. The server
is target/release/integrad (or --binary) on a free loopback port, stopped at the end.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import BINARY, CHANNEL_OPTIONS, REPO, server, stubs, wait_ready  # noqa: E402

MODEL = "penguins"
ROWS = os.path.join(REPO, "models", MODEL, "rows.jsonl")
TIME = "/usr/bin/time"


def status_kb(pid, key):
    """A /proc/PID/status field in kB (VmRSS, VmHWM); None when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def write_rows(path, n):
    with open(ROWS) as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    with open(path, "w", newline="\n") as f:
        for i in range(n):
            f.write(lines[i % len(lines)] + "\n")


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def run_cli(args, address, rows, path, out):
    cmd = [args.binary, "explain-batch", "--server", f"http://{address}", "--model", MODEL,
           "--input", path, "--out", out, "--steps", str(args.steps)]
    if args.chunk:
        cmd += ["--chunk", str(args.chunk)]
    print("$ " + " ".join(cmd), flush=True)
    # /usr/bin/time -v runs it: a child's ru_maxrss counts the memory it had before exec too,
    # and a child forked from this Python process starts with Python's tens of MB; time's
    # own fork is a copy of a 2 MB program.
    report = out + ".time"
    timed = os.access(TIME, os.X_OK)
    full = [TIME, "-v", "-o", report, *cmd] if timed else cmd
    t = time.perf_counter()
    child = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = []
    drain = threading.Thread(target=lambda: err.append(child.stderr.read()), daemon=True)
    drain.start()
    # Polls the CLI's VmRSS and VmHWM (a trace, and a cross-check of time's figure).
    trace, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            pids = children(child.pid) if timed else [child.pid]
            if pids:
                rss, hwm = status_kb(pids[0], "VmRSS"), status_kb(pids[0], "VmHWM")
                if rss is not None and hwm is not None:
                    trace.append((time.perf_counter() - t, rss, hwm))
            stop.wait(0.1)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t
    stop.set()
    poller.join()
    drain.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.stderr.write(err[0].decode(errors="replace"))
        raise SystemExit(f"explain-batch over {rows} rows exited with {child.returncode}")
    peak_kb = usage.ru_maxrss
    if timed:
        with open(report) as f:
            peak_kb = next(int(line.split(":")[1]) for line in f
                           if "Maximum resident set size" in line)
    with open(out, "rb") as f:
        lines = sum(1 for _ in f)
    if lines != rows:
        raise SystemExit(f"explain-batch over {rows} rows wrote {lines} lines")
    return {"rows": rows, "wall": wall, "peak_kb": peak_kb, "trace": trace, "timed": timed,
            "out_bytes": os.path.getsize(out), "user": usage.ru_utime, "sys": usage.ru_stime}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=BINARY, help="the integrad binary (serve and CLI)")
    ap.add_argument("--large", type=int, default=100_000)
    ap.add_argument("--small", type=int, default=1_000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--chunk", type=int, default=0,
                    help="rows per ExplainBatch call; 0: the CLI's default")
    ap.add_argument("--threads", type=int, default=2, help="the server's --intra-threads")
    ap.add_argument("--keep", help="leave the input and output files in this directory")
    args = ap.parse_args()

    work = args.keep or tempfile.mkdtemp(prefix="integrad-rss-")
    os.makedirs(work, exist_ok=True)
    try:
        measure(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def measure(args, work):
    files = {}
    for n in (args.small, args.large):
        files[n] = os.path.join(work, f"rows{n}.jsonl")
        write_rows(files[n], n)
    pb, rpc = stubs(work)
    flags = ["--intra-threads", str(args.threads), "--models", os.path.join(REPO, "models")]
    with server(flags, binary=args.binary) as (address, process):
        stub = rpc.ExplainerStub(grpc.insecure_channel(address, options=CHANNEL_OPTIONS))
        with open(ROWS) as f:
            first = json.loads(f.readline())
        wait_ready(stub, pb.PredictRequest(model=MODEL, input=pb.Input(
            features=pb.FeatureRow(values={k: float(v) for k, v in first.items()}))), process)
        pid = process.pid
        server_rss = [("ready", status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM"))]
        runs = []
        for n in (args.small, args.large):
            r = run_cli(args, address, n, files[n], os.path.join(work, f"out{n}.jsonl"))
            runs.append(r)
            server_rss.append((f"after {n} rows", status_kb(pid, "VmRSS"),
                               status_kb(pid, "VmHWM")))
            print(f"  {n} rows: {r['wall']:.1f} s, {n / r['wall']:.0f} rows/s, CLI peak RSS "
                  f"{r['peak_kb'] / 1024:.1f} MB, output {r['out_bytes'] / 1e6:.1f} MB, CLI "
                  f"CPU {r['user']:.1f} s user + {r['sys']:.1f} s sys", flush=True)
            if not args.keep:
                os.remove(os.path.join(work, f"out{n}.jsonl"))

    small, large = runs
    print(f"\nserver --intra-threads {args.threads}, {args.steps} trapezoid steps, chunk "
          f"{args.chunk or 'CLI default'}, load average {os.getloadavg()[0]:.2f}")
    for r in runs:
        # Where the CLI's RSS stood over time: the first sample, the largest, the last.
        tr = r["trace"]
        samples = (f"{len(tr)} samples, VmRSS first {tr[0][1] / 1024:.1f} MB, largest "
                   f"{max(x[1] for x in tr) / 1024:.1f} MB, last {tr[-1][1] / 1024:.1f} MB, "
                   f"last VmHWM {tr[-1][2] / 1024:.1f} MB") if tr else "no samples"
        source = "/usr/bin/time -v" if r["timed"] else "ru_maxrss (includes the fork)"
        print(f"  explain-batch, {r['rows']} rows: {r['wall']:.2f} s, "
              f"{r['rows'] / r['wall']:.0f} rows/s, peak RSS {r['peak_kb'] / 1024:.1f} MB "
              f"({source}; polled every 0.1 s: {samples})")
    print(f"  CLI peak RSS {large['rows']} / {small['rows']} rows: "
          f"{large['peak_kb'] / small['peak_kb']:.3f}x (goal: at most 1.3x)")
    for label, rss, hwm in server_rss:
        print(f"  server {label}: VmRSS {rss / 1024:.1f} MB, VmHWM {hwm / 1024:.1f} MB")
    after_small, after_large = server_rss[1][1], server_rss[2][1]
    print(f"  server VmRSS after {large['rows']} / after {small['rows']} rows: "
          f"{after_large / after_small:.3f}x ({(after_large - after_small) / 1024:+.1f} MB)")


if __name__ == "__main__":
    main()
