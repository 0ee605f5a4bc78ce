#!/usr/bin/env python3
"""Make the Blur IG, Guided IG and noise tunnel reference fixtures in tests/data/techniques/.

Independent implementations to check integrad's techniques against, on the demo model
(EfficientNet-Lite0) and the three sample photos' model-space inputs
(tests/data/{coffee,chelsea,rocket}_input.npy), objective the softmax PROBABILITY of the
top-1 class on the clean input:

- Blur IG and Guided IG: PAIR's `saliency` package (its own `BlurIG().GetMask` and
  `GuidedIG().GetMask`, defaults), fed gradients of the PyTorch model that model.onnx was
  exported from (scripts/make_demo_model.py's `load_model`);
- Guided IG again, fed exactly the gradients integrad's Explain computes: ONNX Runtime
  running the IG step model Explain runs (`integrad autodiff --objective probability
  --step`) on the inputs Explain feeds it for one Guided IG point, with Explain's session
  settings, so that integrad's Guided IG is compared on the algorithm alone;
- the noise tunnel: Captum's `NoiseTunnel(IntegratedGradients)` (smoothgrad, smoothgrad_sq,
  vargrad) on coffee, with the per-pixel spread of its samples for a statistical comparison;
- the self-noise of PAIR's Guided IG (1e-4 relative noise on the PyTorch gradients; 1e-7 to
  1e-5 on the ORT ones), which sizes the tolerances of the Guided IG comparisons.

What each file is, the exact calls and the measured figures: the "Technique fixtures"
section of tests/data/README.md; everything measured also goes to
tests/data/techniques/techniques.json.

Run with the dev virtualenv (scripts/requirements-dev.txt) after `cargo build --release`
(for `integrad autodiff`):
    .venv-dev/bin/python scripts/make_technique_fixtures.py [--integrad PATH] [--threads 1]
        [--parts noise_tunnel,blur_ig,guided_ig,guided_ig_sensitivity]
"""

import argparse
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time

import captum
import numpy as np
import onnxruntime as ort
import saliency.core as pair
import scipy
import torch
from captum.attr import IntegratedGradients, NoiseTunnel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_demo_model import load_model  # noqa: E402  (the same weights as model.onnx)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")
OUT = os.path.join(DATA, "techniques")
MODEL = os.path.join(REPO, "models", "efficientnet-lite0", "model.onnx")
PHOTOS = ["coffee", "chelsea", "rocket"]
# tests/data/README.md: chelsea's 282 only just beats 285, but from chelsea_input.npy it is 282.
EXPECTED_TOP1 = {"coffee": 967, "chelsea": 282, "rocket": 657}

# Black in model space: pixel 0 through (pixel - 127) / 128, every channel.
BLACK = (0.0 - 127.0) / 128.0
# The side of the blocks of the block correlations (224 = 14 x 16).
BLOCK = 16

# Noise tunnel: integrad's IG with 20 trapezoid steps = 21 alphas = Captum riemann_trapezoid
# n_steps 21 (see scripts/make_captum_fixtures.py), black baseline, noise stdev 0.15 of the
# input's range, many samples so that the mean is a tight reference.
NT_PHOTO = "coffee"
NT_STEPS = 20
NT_SAMPLES = 64
NT_STDEV_SPREAD = 0.15
NT_SEED = 0
# Samples per Captum batch (x 21 alphas per IG run): bounds the memory, not the result.
NT_SAMPLES_BATCH = 4
# PAIR's Blur IG sends this many path points per call_model_function call. With its
# default (linear) sigmas every step has the same sigma difference, so the result does not
# depend on it (PAIR multiplies a whole batch by the last step's difference).
BLUR_BATCH = 10
SELF_NOISE = 1e-4
# Smaller relative gradient noise, with ORT gradients only (cheap): where the chaos sets in.
SENSITIVITY_NOISE = [1e-7, 1e-6, 1e-5]
PARTS = ["noise_tunnel", "blur_ig", "guided_ig", "guided_ig_sensitivity"]


class _NumpyForPair:
    """numpy for PAIR's guided_ig module, whose np.quantile call still passes
    `interpolation='lower'`: NumPy 1.22 renamed that argument `method` and NumPy 2 no longer
    accepts the old name (TypeError). Everything else is numpy itself."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def quantile(a, q, *args, interpolation=None, **kwargs):
        if interpolation is not None:
            kwargs["method"] = interpolation
        return np.quantile(a, q, *args, **kwargs)


# Only PAIR's guided_ig module sees the wrapper; numpy itself is left alone.
importlib.import_module("saliency.core.guided_ig").np = _NumpyForPair()


class TorchGradients:
    """d softmax(model(x))[target] / dx with PyTorch, for PAIR's call_model_function."""

    def __init__(self, model, target, layout="NCHW", rel_noise=0.0, seed=0):
        self.model, self.target, self.layout = model, target, layout
        self.rel_noise = rel_noise
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    def __call__(self, x_batch, call_model_args=None, expected_keys=None):
        x = np.asarray(x_batch, dtype=np.float32)
        if self.layout == "NHWC":
            x = x.transpose(0, 3, 1, 2)
        xt = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)
        p = torch.softmax(self.model(xt), dim=1)[:, self.target].sum()
        (g,) = torch.autograd.grad(p, xt)
        g = g.numpy()
        if self.rel_noise:
            # Multiplicative noise: every gradient element off by about rel_noise of itself,
            # roughly how two correct float32 gradient implementations differ.
            g = g * (1.0 + self.rel_noise * self.rng.standard_normal(g.shape)).astype(g.dtype)
        if self.layout == "NHWC":
            g = g.transpose(0, 2, 3, 1)
        self.calls += x.shape[0]
        return {pair.INPUT_OUTPUT_GRADIENTS: g}


class OrtGradients:
    """The same gradients as integrad's Explain computes them: its IG step model
    (src/explain/step.rs) in ONNX Runtime, fed what Explain's walks feed it for a free point
    (src/explain/walk.rs): one run per point, of one row, the path from the point to itself
    at alpha 1 (`ig_alpha` 1, `ig_one_minus_alpha` 0: exactly the point), `ig_path` 0, no
    sums (`ig_weights` [0, 1]), a one-hot `cotangent` of the target (the probability
    objective's derivative is taken inside the graph); output `ig_grads`, the row's gradient.
    PAIR hands over float64 points; Explain's walk rounds them to float32 as this does."""

    def __init__(self, session, target):
        self.session, self.target = session, target
        self.calls = 0

    def __call__(self, x_batch, call_model_args=None, expected_keys=None):
        x = np.ascontiguousarray(x_batch, dtype=np.float32)
        grads = []
        for point in x:
            row = point[None]
            cot = np.zeros((1, 1000), dtype=np.float32)
            cot[0, self.target] = 1.0
            ones = (1,) * row.ndim
            (g,) = self.session.run(["ig_grads"], {
                "ig_input": row, "ig_baseline": row,
                "ig_path": np.zeros(1, dtype=np.int64),
                "ig_alpha": np.ones(ones, dtype=np.float32),
                "ig_one_minus_alpha": np.zeros(ones, dtype=np.float32),
                "ig_weights": np.zeros((0, 1), dtype=np.float32),
                "cotangent": cot,
            })
            grads.append(g.reshape(point.shape))
        self.calls += x.shape[0]
        return {pair.INPUT_OUTPUT_GRADIENTS: np.stack(grads)}


class NoisyOrtGradients(OrtGradients):
    """OrtGradients times 1 + rel_noise * N(0, 1), elementwise."""

    def __init__(self, session, target, rel_noise, seed):
        super().__init__(session, target)
        self.rel_noise, self.rng = rel_noise, np.random.default_rng(seed)

    def __call__(self, x_batch, call_model_args=None, expected_keys=None):
        g = super().__call__(x_batch)[pair.INPUT_OUTPUT_GRADIENTS]
        g = g * (1.0 + self.rel_noise * self.rng.standard_normal(g.shape)).astype(g.dtype)
        return {pair.INPUT_OUTPUT_GRADIENTS: g}


class RecordingNoiseTunnel(NoiseTunnel):
    """Captum's NoiseTunnel that also keeps the two sums it combines (the mean of the
    samples' attributions and the mean of their squares), so that one run over one draw of
    noise gives all three kinds through Captum's own `_compute_smoothing`."""

    def _compute_smoothing(self, expected, expected_sq, nt_type):
        self.recorded = (expected, expected_sq)
        return NoiseTunnel._compute_smoothing(expected, expected_sq, nt_type)


def explain_session_options(threads):
    """The session settings integrad opens its models with (src/model/load.rs,
    `session_builder`, with its defaults): every graph optimization, sequential execution,
    one inter-op thread, no spinning. Its intra-op threads default to the cores; `threads`
    here (measured: 1 and 2 give the same bits on this model)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def pearson(a, b):
    return float(np.corrcoef(np.ravel(a).astype(np.float64),
                             np.ravel(b).astype(np.float64))[0, 1])


def block_abs(attr):
    """[3, 224, 224] -> [14, 14]: sum of |attribution| over the channels and each 16x16
    block."""
    a = np.abs(np.asarray(attr, dtype=np.float64)).sum(axis=0)
    h, w = a.shape
    return a.reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).sum(axis=(1, 3))


def probability(model, x_chw, target):
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(x_chw, dtype=np.float32))[None]
        return float(torch.softmax(model(x), dim=1)[0, target])


def save(name, array):
    np.save(os.path.join(OUT, name), array)
    return name


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--integrad", default=os.path.join(REPO, "target", "release", "integrad"),
                    help="the integrad binary whose `autodiff` writes the gradient model")
    ap.add_argument("--threads", type=int, default=1,
                    help="PyTorch and ONNX Runtime threads (the results do not depend on it "
                         "beyond float rounding; 1 is the fastest on a busy 2-core machine)")
    ap.add_argument("--nt-samples", type=int, default=NT_SAMPLES,
                    help="noise tunnel samples (fewer only to try the script out)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="comma-separated subset of " + ",".join(PARTS) + "; each updates "
                         "its own entries of techniques.json (so parts may run in separate "
                         "processes)")
    ap.add_argument("--photos", default=",".join(PHOTOS),
                    help="comma-separated subset of the photos (only to try the script out)")
    args = ap.parse_args()
    photos = [p for p in args.photos.split(",") if p]
    if not photos or set(photos) - set(PHOTOS):
        raise SystemExit(f"--photos: expected some of {','.join(PHOTOS)}")
    parts = [p for p in args.parts.split(",") if p]
    if not parts or set(parts) - set(PARTS):
        raise SystemExit(f"--parts: expected some of {','.join(PARTS)}")
    torch.set_num_threads(args.threads)
    os.makedirs(OUT, exist_ok=True)
    started = time.perf_counter()

    model = load_model()
    inputs = {p: np.load(os.path.join(DATA, f"{p}_input.npy")) for p in photos}
    targets = {}
    for photo, x in inputs.items():
        assert x.shape == (3, 224, 224) and x.dtype == np.float32, (photo, x.shape, x.dtype)
        with torch.no_grad():
            targets[photo] = int(model(torch.from_numpy(x)[None]).argmax(dim=1))
        assert targets[photo] == EXPECTED_TOP1[photo], (photo, targets[photo])

    meta_path = os.path.join(OUT, "techniques.json")
    # This run's entries; merged into the file's at the end.
    meta = {
        "files": {}, "seconds": {}, "targets": targets,
        "versions": {"saliency": importlib.metadata.version("saliency"),
                     "captum": captum.__version__, "torch": torch.__version__,
                     "onnxruntime": ort.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__},
        "objective": "probability",
        "threads": args.threads,
    }

    if "noise_tunnel" in parts and NT_PHOTO in inputs:
        noise_tunnel(meta, model, inputs[NT_PHOTO], targets[NT_PHOTO], args.nt_samples)
    if "blur_ig" in parts:
        blur_ig(meta, model, inputs, targets)
    if "guided_ig" in parts or "guided_ig_sensitivity" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            step_path = os.path.join(tmp, "step.onnx")
            subprocess.run([args.integrad, "autodiff", MODEL, "--objective", "probability",
                            "--step", "-o", step_path], check=True)
            session = ort.InferenceSession(step_path, explain_session_options(args.threads),
                                           providers=["CPUExecutionProvider"])
            if "guided_ig" in parts:
                guided_ig(meta, model, session, inputs, targets)
            if "guided_ig_sensitivity" in parts:
                guided_ig_sensitivity(meta, session, inputs, targets)

    # Read only now: another process may have finished its parts meanwhile.
    merged = {}
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            merged = json.load(f)
    for key in ("files", "seconds", "targets"):
        merged.setdefault(key, {}).update(meta.pop(key))
    merged.update(meta)
    with open(meta_path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(merged, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"done: {', '.join(parts)} in {time.perf_counter() - started:.0f} s")


def blur_ig(meta, model, inputs, targets):
    t = time.perf_counter()
    for photo, x in inputs.items():
        target = targets[photo]
        grads = TorchGradients(model, target, layout="NHWC")
        # PAIR blurs HWC images with sigma [s, s, 0]. float64 so that the path derivative's
        # finite difference (blur(s + 0.01) - blur(s)) / 0.01 is not rounded to float32
        # first; the model still sees float32.
        x_hwc = x.transpose(1, 2, 0).astype(np.float64)
        attr = pair.BlurIG().GetMask(x_hwc, grads, batch_size=BLUR_BATCH)
        attr = attr.transpose(2, 0, 1).astype(np.float32)
        blurred = pair.gaussian_blur(x_hwc, 50.0).transpose(2, 0, 1)
        f_x, f_b = probability(model, x, target), probability(model, blurred, target)
        name = save(f"blur_ig_{photo}.npy", attr)
        meta["files"][name] = {
            "what": "PAIR BlurIG().GetMask, defaults (max_sigma 50, steps 100, "
                    "grad_step 0.01), PyTorch gradients",
            "dtype": "float32", "shape": list(attr.shape), "target": target,
            "gradient_evaluations": grads.calls,
            "score_input": f_x, "score_max_blur": f_b,
            "attribution_sum": float(attr.astype(np.float64).sum()),
        }
        print(f"blur_ig {photo}: sum {attr.sum():.6f}, F(x) - F(blur 50) {f_x - f_b:.6f}",
              flush=True)
    meta["seconds"]["blur_ig"] = round(time.perf_counter() - t, 1)


def guided_ig(meta, model, session, inputs, targets):
    t = time.perf_counter()
    noise = {}
    for photo, x in inputs.items():
        target = targets[photo]
        f_x, f_0 = probability(model, x, target), probability(model, np.zeros_like(x), target)

        torch_grads = TorchGradients(model, target)
        attr_pt = pair.GuidedIG().GetMask(x, torch_grads, x_baseline=np.zeros_like(x))
        ort_grads = OrtGradients(session, target)
        attr_ort = pair.GuidedIG().GetMask(x, ort_grads, x_baseline=np.zeros_like(x))
        noisy_grads = TorchGradients(model, target, rel_noise=SELF_NOISE, seed=1)
        attr_noisy = pair.GuidedIG().GetMask(x, noisy_grads, x_baseline=np.zeros_like(x))

        name = save(f"guided_ig_{photo}_ort.npy", attr_ort.astype(np.float32))
        meta["files"][name] = {
            "what": "PAIR GuidedIG().GetMask, defaults (x_steps 200, fraction 0.25, "
                    "max_dist 0.02), baseline zeros, ONNX Runtime gradients of the IG step "
                    "model integrad's Explain runs (integrad autodiff --step), fed as "
                    "Explain feeds it",
            "dtype": "float32", "shape": list(attr_ort.shape), "target": target,
            "gradient_evaluations": ort_grads.calls,
            "score_input": f_x, "score_baseline": f_0,
            "attribution_sum": float(attr_ort.sum()),
        }
        blocks_pt = block_abs(attr_pt)
        name = save(f"guided_ig_{photo}_pytorch.npy", blocks_pt.astype(np.float32))
        meta["files"][name] = {
            "what": "PAIR GuidedIG().GetMask as above with PyTorch gradients, as 16x16 block "
                    "sums of |attribution| summed over the channels",
            "dtype": "float32", "shape": list(blocks_pt.shape), "target": target,
            "gradient_evaluations": torch_grads.calls,
            "attribution_sum": float(attr_pt.sum()),
        }
        noise[photo] = {
            "pytorch_vs_noisy_pytorch": {
                "pixel": pearson(attr_pt, attr_noisy),
                "block16": pearson(blocks_pt, block_abs(attr_noisy)),
            },
            "pytorch_vs_ort": {
                "pixel": pearson(attr_pt, attr_ort),
                "block16": pearson(blocks_pt, block_abs(attr_ort)),
            },
            "noisy_pytorch_vs_ort": {
                "pixel": pearson(attr_noisy, attr_ort),
                "block16": pearson(block_abs(attr_noisy), block_abs(attr_ort)),
            },
        }
        print(f"guided_ig {photo}: sum pytorch {attr_pt.sum():.6f} ort {attr_ort.sum():.6f}, "
              f"F(x) - F(0) {f_x - f_0:.6f}; correlations {noise[photo]}", flush=True)
    meta["guided_ig_correlations"] = {
        "relative_gradient_noise": SELF_NOISE,
        "what": "Pearson correlations over all 3x224x224 attributions (pixel) and over the "
                "14x14 16x16-block sums of |attribution| (block16)",
        "photos": noise,
    }
    meta["seconds"]["guided_ig"] = round(time.perf_counter() - t, 1)


def guided_ig_sensitivity(meta, session, inputs, targets):
    """PAIR's Guided IG with ORT gradients under smaller relative noise than the 1e-4 of
    guided_ig, against the stored guided_ig_<photo>_ort.npy; the clean rerun must reproduce
    that file bit for bit."""
    t = time.perf_counter()
    found = {}
    for photo, x in inputs.items():
        target = targets[photo]
        stored = np.load(os.path.join(OUT, f"guided_ig_{photo}_ort.npy"))
        clean = pair.GuidedIG().GetMask(x, OrtGradients(session, target),
                                        x_baseline=np.zeros_like(x))
        assert np.array_equal(clean.astype(np.float32), stored), photo
        found[photo] = {}
        for rel in SENSITIVITY_NOISE:
            noisy = pair.GuidedIG().GetMask(x, NoisyOrtGradients(session, target, rel, 1),
                                            x_baseline=np.zeros_like(x))
            found[photo][f"{rel:g}"] = {"pixel": pearson(clean, noisy),
                                        "block16": pearson(block_abs(clean),
                                                           block_abs(noisy))}
        print(f"guided_ig sensitivity {photo}: {found[photo]}", flush=True)
    meta["guided_ig_sensitivity"] = {
        "what": "PAIR Guided IG with ORT gradients times 1 + rel * N(0, 1) (seed 1) against "
                "the same without noise (guided_ig_<photo>_ort.npy, reproduced bit for bit): "
                "Pearson correlations, pixel and block16, by rel",
        "photos": found,
    }
    meta["seconds"]["guided_ig_sensitivity"] = round(time.perf_counter() - t, 1)


def noise_tunnel(meta, model, x_np, target, samples):
    t = time.perf_counter()
    forward = lambda z: torch.softmax(model(z), dim=1)  # noqa: E731
    x = torch.from_numpy(x_np)[None]
    base = torch.full_like(x, BLACK)
    n_steps = NT_STEPS + 1
    # Captum's riemann_trapezoid weights sum to (n - 1) / n: scaling every sample's
    # attribution by n / (n - 1) gives integrad's trapezoid (make_captum_fixtures.py).
    scale = n_steps / (n_steps - 1)
    # Captum's stdevs is absolute; integrad's (and PAIR's stdev_spread) a fraction of the
    # input's range.
    stdev = NT_STDEV_SPREAD * float(x_np.max() - x_np.min())
    kwargs = dict(baselines=base, target=target, n_steps=n_steps,
                  method="riemann_trapezoid", internal_batch_size=n_steps * NT_SAMPLES_BATCH)

    # One run, all three kinds: check first, on a few samples, that this is what separate
    # nt_type runs over the same seed return.
    nt = RecordingNoiseTunnel(IntegratedGradients(forward))
    torch.manual_seed(NT_SEED)
    nt.attribute(x, nt_type="smoothgrad", nt_samples=2, stdevs=stdev, **kwargs)
    mean2, sq2 = (r[0] for r in nt.recorded)
    for kind, recorded in [("smoothgrad", mean2), ("smoothgrad_sq", sq2),
                           ("vargrad", sq2 - mean2 * mean2)]:
        torch.manual_seed(NT_SEED)
        alone = NoiseTunnel(IntegratedGradients(forward)).attribute(
            x, nt_type=kind, nt_samples=2, stdevs=stdev, **kwargs)
        assert torch.equal(alone, recorded), kind

    torch.manual_seed(NT_SEED)
    attr = nt.attribute(x, nt_type="smoothgrad", nt_samples=samples,
                        nt_samples_batch_size=NT_SAMPLES_BATCH, stdevs=stdev, **kwargs)
    mean, sq = (r[0] for r in nt.recorded)
    assert torch.equal(attr, mean)
    var = NoiseTunnel._compute_smoothing((mean,), (sq,), "vargrad")[0]
    mean = mean[0].double().numpy() * scale
    sq = sq[0].double().numpy() * scale * scale
    var = var[0].double().numpy() * scale * scale
    # The samples' standard deviation (n - 1 in the denominator), per element.
    std = np.sqrt(np.maximum(var, 0.0) * samples / (samples - 1))

    common = {
        "photo": NT_PHOTO, "target": target, "samples": samples,
        "stdev_spread": NT_STDEV_SPREAD, "stdev_absolute": stdev, "seed": NT_SEED,
        "integrad_steps": NT_STEPS, "captum_n_steps": n_steps, "weight_scale": scale,
        "baseline": "black",
    }
    for kind, array in [("smoothgrad", mean), ("smoothgrad_sq", sq), ("vargrad", var),
                        ("std", std)]:
        name = save(f"noise_tunnel_{NT_PHOTO}_{kind}.npy", array.astype(np.float32))
        meta["files"][name] = {"kind": kind, "dtype": "float32", "shape": list(array.shape),
                               "sum": float(array.sum()), **common}
    se = std / np.sqrt(samples)
    meta["noise_tunnel_summary"] = {
        "mean_abs_smoothgrad": float(np.abs(mean).mean()),
        "mean_std": float(std.mean()),
        "median_std_over_abs_mean": float(np.median(std / np.maximum(np.abs(mean), 1e-30))),
        "mean_standard_error_of_mean": float(se.mean()),
        "smoothgrad_sum": float(mean.sum()),
    }
    print(f"noise tunnel: sum {mean.sum():.6f}, mean |smoothgrad| {np.abs(mean).mean():.3e}, "
          f"mean std {std.mean():.3e}", flush=True)
    meta["seconds"]["noise_tunnel"] = round(time.perf_counter() - t, 1)


if __name__ == "__main__":
    main()
