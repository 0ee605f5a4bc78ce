#!/usr/bin/env python3
"""Make the Captum Integrated Gradients fixtures in tests/data/ig/.

An independent implementation to check integrad's Explain against: Captum's
IntegratedGradients on the PyTorch model that models/efficientnet-lite0/model.onnx was
exported from (rebuilt by scripts/make_demo_model.py's own `load_model`, so the
weights and eval mode are the same). tests/it/explain_captum.rs sends the same input and
baseline tensors to Explain and compares. What each file is, and the exact Captum calls:
tests/data/ig/README.md.

Run with the dev virtualenv (scripts/requirements-dev.txt):
    .venv-dev/bin/python scripts/make_captum_fixtures.py
"""

import json
import os
import sys

import captum
import numpy as np
import torch
from captum.attr import IntegratedGradients

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_demo_model import load_model  # noqa: E402  (the same weights as model.onnx)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")
OUT = os.path.join(DATA, "ig")

# Black in model space: pixel 0 through (pixel - 127) / 128, every channel.
BLACK = (0.0 - 127.0) / 128.0

# (file stem, Captum method, Captum n_steps, objective, baseline).
# integrad's `steps` is m: trapezoid evaluates m + 1 alphas, midpoint and Gauss-Legendre
# m alphas. Captum's n_steps is always the number of alphas. So integrad trapezoid
# steps=50 <-> Captum riemann_trapezoid n_steps=51 (normalised, see below); midpoint and
# Gauss-Legendre steps=50 <-> n_steps=50.
CASES = [
    ("coffee_gl50_probability_black", "gausslegendre", 50, "probability", "black"),
    ("coffee_mid50_probability_black", "riemann_middle", 50, "probability", "black"),
    ("coffee_gl50_logit_zeros", "gausslegendre", 50, "logit", "zeros"),
    ("coffee_trap50_probability_black", "riemann_trapezoid", 51, "probability", "black"),
]


def forward_for(model, objective):
    if objective == "logit":
        return model
    return lambda x: torch.softmax(model(x), dim=1)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    model = load_model()
    x = torch.from_numpy(np.load(os.path.join(DATA, "coffee_input.npy")))[None]
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    with torch.no_grad():
        target = int(model(x).argmax(dim=1))
    print(f"top-1 of coffee_input.npy: {target}")
    assert target == 967, target  # espresso

    meta = {
        "versions": {"torch": torch.__version__, "captum": captum.__version__,
                     "numpy": np.__version__},
        "input": "tests/data/coffee_input.npy",
        "target": target,
        "cases": {},
    }
    for stem, method, n_steps, objective, baseline in CASES:
        base = torch.full_like(x, BLACK) if baseline == "black" else torch.zeros_like(x)
        forward = forward_for(model, objective)
        ig = IntegratedGradients(forward)
        attr, delta = ig.attribute(
            x, baselines=base, target=target, n_steps=n_steps, method=method,
            internal_batch_size=17, return_convergence_delta=True)
        attr = attr.detach().double()
        # NOTE: Captum's riemann_trapezoid weights are 1/n each with the two ends halved, so
        # they sum to (n - 1) / n. Scaling by n / (n - 1) gives the standard trapezoid rule
        # with n - 1 intervals (ends 1 / (2 (n - 1)), interior 1 / (n - 1)), which is what
        # integrad's trapezoid computes. The other methods' weights already sum to 1.
        scale = n_steps / (n_steps - 1) if method == "riemann_trapezoid" else 1.0
        attr = attr * scale
        with torch.no_grad():
            f_x = float(forward(x)[0, target])
            f_b = float(forward(base)[0, target])
        total = float(attr.sum())
        # Recomputed after the normalisation; equal to Captum's own delta when scale is 1.
        conv = total - (f_x - f_b)
        if scale == 1.0:
            assert abs(conv - float(delta[0])) < 1e-4 * max(1.0, abs(f_x - f_b)), \
                (conv, float(delta[0]))
        a32 = attr[0].float().numpy()
        np.save(os.path.join(OUT, f"{stem}.npy"), a32)
        meta["cases"][stem] = {
            "captum_method": method, "captum_n_steps": n_steps,
            "objective": objective, "baseline": baseline,
            "weight_scale": scale,
            "score_input": f_x, "score_baseline": f_b,
            "attribution_sum": total, "convergence_delta": conv,
            "captum_convergence_delta": float(delta[0]),
        }
        print(f"{stem}: F(x) {f_x:.6f} F(x') {f_b:.6f} sum {total:.6f} "
              f"delta {conv:+.6f} (Captum's own {float(delta[0]):+.6f})")

    with open(os.path.join(OUT, "captum.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
