#!/usr/bin/env python3
"""Make the faithfulness-metric fixtures in tests/data/metrics/.

References for integrad's Evaluate (tests/it/evaluate.rs), each made by code that is not
integrad's:

- SIC and AIC: PAIR's own `saliency.metrics.compute_pic_metric` (saliency 0.2.1), with its
  `generate_random_mask`, `create_blurred_image` (scipy griddata) and
  `estimate_image_entropy` (Pillow's lossless WebP), the model called through ONNX Runtime.
- Deletion and insertion: RISE's CausalMetric recipe (Petsiuk et al., BMVC 2018) written
  here in numpy, with RISE's own substrate for insertion (its `gkern(11, 5)` kernel, made by
  scipy's gaussian_filter, applied by torch's conv2d with zero padding as RISE does).

The saliency maps: Captum Integrated Gradients of the cat photo (made here, the same recipe
as tests/data/ig/coffee_gl50_probability_black.npy: Gauss-Legendre, 50 steps, probability,
black baseline), the committed coffee IG map, and a random map of the cat photo.

Run with the dev virtualenv (scripts/requirements-dev.txt):
    .venv-dev/bin/python scripts/make_metric_fixtures.py
"""

import io
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import scipy.ndimage
import torch
from PIL import Image
from saliency.metrics import pic

# PAIR's compute_pic_metric calls np.trapz, an alias numpy 2.4 removed; np.trapezoid is the
# same function under its current name.
if not hasattr(np, "trapz"):
    np.trapz = np.trapezoid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")
OUT = os.path.join(DATA, "metrics")
MODEL = os.path.join(REPO, "models", "efficientnet-lite0", "model.onnx")

# PAIR's pic_metrics notebook thresholds (also integrad's default).
THRESHOLDS = [0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75]
# RISE: 224 * 8 pixels per step on a 224 x 224 input (28 steps).
STEP = 224 * 8
BLACK = (0.0 - 127.0) / 128.0


def to_model(pixels_hwc_uint8):
    """The demo model's preprocessing of 8-bit HWC pictures: (pixel - 127) / 128, NCHW."""
    x = (pixels_hwc_uint8.astype(np.float32) - 127.0) / 128.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class Model:
    def __init__(self):
        self.session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def logits(self, x):
        out = []
        for start in range(0, len(x), 16):
            out.append(self.session.run(None, {self.input: x[start:start + 16]})[0])
        return np.concatenate(out).astype(np.float64)

    def probabilities(self, x):
        logits = self.logits(x)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def rise_gkern(klen=11, nsig=5):
    """RISE's kernel: a delta blurred by scipy's gaussian_filter (its default reflect mode)."""
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    k = scipy.ndimage.gaussian_filter(inp, nsig)
    kern = np.zeros((3, 3, klen, klen), np.float32)
    for c in range(3):
        kern[c, c] = k
    return torch.from_numpy(kern)


def rise_blur(x):
    """RISE's insertion substrate: conv2d with its gkern, zero padding, in model space."""
    kern = rise_gkern()
    with torch.no_grad():
        return torch.nn.functional.conv2d(torch.from_numpy(x[None]), kern, padding=11 // 2)[0].numpy()


def causal(model, x, saliency_hw, target, mode, substrate):
    """Deletion or insertion as RISE's CausalMetric.single_run: the most salient pixels first
    (ties by pixel index), `STEP` pixels per step, every channel of a pixel at once."""
    c, h, w = x.shape
    hw = h * w
    order = np.argsort(-saliency_hw.reshape(-1), kind="stable")
    if substrate == "black":
        other = np.full_like(x, BLACK)
    elif substrate == "blur":
        other = rise_blur(x)
    else:
        raise ValueError(substrate)
    start, finish = (x.copy(), other) if mode == "deletion" else (other, x.copy())
    n_steps = (hw + STEP - 1) // STEP
    images = []
    current = start.reshape(c, hw).copy()
    for i in range(n_steps + 1):
        images.append(current.reshape(c, h, w).copy())
        if i < n_steps:
            coords = order[STEP * i:STEP * (i + 1)]
            current[:, coords] = finish.reshape(c, hw)[:, coords]
    scores = model.probabilities(np.stack(images))[:, target]
    xs = np.minimum(np.arange(n_steps + 1) * STEP, hw) / hw
    return {
        "x": xs.tolist(),
        "y": scores.tolist(),
        "auc": float(np.trapezoid(scores, xs)),
    }


def pic_metric(model, crop, saliency_hw, mask, target, kind, min_pred_value):
    def pred(batch):
        if kind == "sic":
            return model.probabilities(to_model(batch))[:, target].tolist()
        return (model.logits(to_model(batch)).argmax(axis=1) == target).astype(float).tolist()

    try:
        r = pic.compute_pic_metric(
            img=crop,
            saliency_map=saliency_hw,
            random_mask=mask,
            pred_func=pred,
            saliency_thresholds=THRESHOLDS,
            min_pred_value=min_pred_value,
            keep_monotonous=True,
            num_data_points=1000,
        )
    except pic.ComputePicMetricError as e:
        return {"skipped": str(e)}
    entropies = [pic.estimate_image_entropy(b) for b in r.blurred_images]
    return {
        "auc": float(r.auc),
        "curve_y": [float(v) for v in r.curve_y],
        "predictions": [float(p) for p in r.predictions],
        "entropies": entropies,
        "min_pred_value": min_pred_value,
    }


def captum_ig(name, target):
    from captum.attr import IntegratedGradients
    from make_demo_model import load_model

    model = load_model()
    x = torch.from_numpy(np.load(os.path.join(DATA, f"{name}_input.npy")))[None]
    forward = lambda v: torch.softmax(model(v), dim=1)  # noqa: E731
    ig = IntegratedGradients(forward)
    attr = ig.attribute(x, baselines=torch.full_like(x, BLACK), target=target, n_steps=50,
                        method="gausslegendre", internal_batch_size=17)
    return attr[0].detach().numpy().astype(np.float32)


def main():
    os.makedirs(OUT, exist_ok=True)
    model = Model()

    chelsea_ig_path = os.path.join(OUT, "chelsea_ig.npy")
    if not os.path.exists(chelsea_ig_path):
        torch.manual_seed(0)
        np.save(chelsea_ig_path, captum_ig("chelsea", 282))
    maps = {
        "chelsea_ig": np.load(chelsea_ig_path),
        "coffee_ig": np.load(os.path.join(DATA, "ig", "coffee_gl50_probability_black.npy")),
    }
    random_map = np.random.default_rng(1).random((224, 224)).astype(np.float32)
    np.save(os.path.join(OUT, "chelsea_random_saliency.npy"), random_map)
    maps["chelsea_random"] = random_map

    masks = {}
    for photo, seed in [("chelsea", 0), ("coffee", 1)]:
        np.random.seed(seed)
        mask = pic.generate_random_mask(224, 224, fraction=0.01)
        masks[photo] = mask
        np.save(os.path.join(OUT, f"{photo}_random_mask.npy"), mask.astype(np.float32))

    # The fully blurred cat (PAIR's create_blurred_image over the random mask alone), to
    # check integrad's interpolation pixel by pixel.
    chelsea_crop = np.load(os.path.join(DATA, "chelsea_crop.npy"))
    blurred = pic.create_blurred_image(chelsea_crop, masks["chelsea"])
    np.save(os.path.join(OUT, "chelsea_fully_blurred.npy"), blurred)

    # Lossless WebP sizes as PAIR measures them (Pillow), for integrad's entropy estimate.
    sizes = {
        "chelsea_crop": pic.estimate_image_entropy(chelsea_crop),
        "chelsea_fully_blurred": pic.estimate_image_entropy(blurred),
        "coffee_crop": pic.estimate_image_entropy(np.load(os.path.join(DATA, "coffee_crop.npy"))),
    }

    cases = []
    # (map, photo, target, SIC's min_pred_value): the cat's top-1 is only p = 0.379, below
    # PAIR's default 0.8, so its SIC is asked with 0.
    for map_name, photo, target, sic_min in [
        ("chelsea_ig", "chelsea", 282, 0.0),
        ("coffee_ig", "coffee", 967, 0.8),
        ("chelsea_random", "chelsea", 282, 0.0),
    ]:
        x = np.load(os.path.join(DATA, f"{photo}_input.npy"))
        crop = np.load(os.path.join(DATA, f"{photo}_crop.npy"))
        assert np.array_equal(to_model(crop[None])[0], x)
        raw = maps[map_name]
        saliency = raw if raw.ndim == 2 else np.abs(raw).sum(axis=0)
        case = {
            "map": map_name,
            "photo": photo,
            "target": target,
            "deletion": causal(model, x, saliency, target, "deletion", "black"),
            "insertion": causal(model, x, saliency, target, "insertion", "blur"),
            "sic": pic_metric(model, crop, saliency, masks[photo], target, "sic", sic_min),
            "aic": pic_metric(model, crop, saliency, masks[photo], target, "aic", 0.8),
        }
        print(map_name, {k: case[k].get("auc", case[k].get("skipped")) for k in
                         ["deletion", "insertion", "sic", "aic"]})
        cases.append(case)

    with open(os.path.join(OUT, "metrics.json"), "w") as f:
        json.dump({"thresholds": THRESHOLDS, "step": STEP, "webp_sizes": sizes, "cases": cases},
                  f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
