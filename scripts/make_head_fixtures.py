#!/usr/bin/env python3
"""Make the small tabular models and Captum Integrated Gradients fixtures in tests/data/heads/.

Three tiny real models, trained here on data sets bundled in scikit-learn's wheel (no
download), exported to ONNX, plus Captum references to check integrad's Explain against:

- cancer-logit: breast cancer (30 raw features), standardisation with the training split's
  mean/std folded into the model (first op (x - mean) / std), Linear(30,16)-ReLU-Linear(16,1).
  Input `features` [batch, 30], output `logit` [batch, 1]. Positive class = malignant
  (trained on 1 - sklearn's target, whose 1 is benign).
- cancer-sigmoid: the same weights with a final torch.sigmoid, output `probability`
  [batch, 1]; the last ONNX node is a Sigmoid.
- diabetes-regression: diabetes (10 features, sklearn's scaled ones), Linear(10,16)-ReLU-
  Linear(16,1), output `progression` [batch, 1] in the data set's own units.

Everything is deterministic: fixed seeds, fixed split, one CPU thread. What each file is and
the exact Captum calls: tests/data/heads/README.md.

Run with the dev virtualenv (scripts/requirements-dev.txt):
    .venv-dev/bin/python scripts/make_head_fixtures.py
"""

import json
import os

import captum
import numpy as np
import onnx
import onnxruntime as ort
import sklearn
import torch
from captum.attr import IntegratedGradients
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.model_selection import train_test_split
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "data", "heads")

SEED = 0
TEST_SIZE = 0.25
ROWS = 4  # the first ROWS rows of each test split get Captum references

# (file tag, Captum method, Captum n_steps). integrad trapezoid steps=m evaluates m + 1
# alphas = Captum riemann_trapezoid n_steps=m + 1 (normalised, see below); integrad
# Gauss-Legendre steps=m = Captum gausslegendre n_steps=m.
METHODS = [
    ("gl64", "gausslegendre", 64),
    ("trap64", "riemann_trapezoid", 65),
]

EPOCHS = 500
LR = 1e-3  # Adam, full batch; a gentle fit keeps the cancer logits unsaturated (|logit| ~ 3-6)

# ORT vs torch: 1e-5 absolute, relative where |output| > 1 (diabetes' progression is
# ~100-300, where one float32 ulp is already 0.8e-5 to 3e-5).
TOL_ORT = 1e-5


class Standardise(nn.Module):
    """(x - mean) / std with the training split's statistics, as constants in the graph."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("std", torch.from_numpy(std))

    def forward(self, x):
        return (x - self.mean) / self.std


class WithSigmoid(nn.Module):
    def __init__(self, logit_model):
        super().__init__()
        self.logit_model = logit_model

    def forward(self, x):
        return torch.sigmoid(self.logit_model(x))


def mlp(n_in):
    return nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, 1))


def train(model, x, y, loss_fn, epochs, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return loss.item()


def export(model, n_in, out_name, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    dummy = torch.zeros(2, n_in, dtype=torch.float32)
    torch.onnx.export(
        model, (dummy,), path, dynamo=False, opset_version=17,
        input_names=["features"], output_names=[out_name],
        dynamic_axes={"features": {0: "batch"}, out_name: {0: "batch"}})
    m = onnx.load(path)
    onnx.checker.check_model(m)
    g = m.graph
    assert [i.name for i in g.input] == ["features"], [i.name for i in g.input]
    assert [o.name for o in g.output] == [out_name], [o.name for o in g.output]
    for vi in (g.input[0], g.output[0]):
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        dims = vi.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch", dims
    return m


def ort_check(path, model, rows, out_name):
    """ORT on the exported model vs torch, on the rows together and one at a time."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run([out_name], {"features": rows})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(rows)).numpy()
    assert got.shape == (len(rows), 1) and got.dtype == np.float32, (got.shape, got.dtype)
    tol = TOL_ORT * np.maximum(1.0, np.abs(want))
    err = float(np.max(np.abs(got - want)))
    assert np.all(np.abs(got - want) <= tol), (path, got, want)
    for i in range(len(rows)):
        one = sess.run([out_name], {"features": rows[i:i + 1]})[0]
        assert np.all(np.abs(one - want[i:i + 1]) <= tol[i:i + 1]), (path, i, one, want[i])
    print(f"{os.path.relpath(path, REPO)}: ORT vs torch max |diff| {err:.3g}")
    return got, err


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(f"{line}\n")


def captum_cases(model_dir, objectives, x, baselines):
    """Captum IG for each (objective, baseline, method); writes the .npy, returns JSON."""
    out = {}
    for objective, forward in objectives:
        for bname, b in baselines:
            base = torch.from_numpy(np.broadcast_to(b, x.shape).copy())
            with torch.no_grad():
                f_x = forward(x)[:, 0].double()
                f_b = forward(base)[:, 0].double()
            for tag, method, n_steps in METHODS:
                ig = IntegratedGradients(forward)
                attr, delta = ig.attribute(
                    x, baselines=base, target=0, n_steps=n_steps, method=method,
                    return_convergence_delta=True)
                attr = attr.detach().double()
                # Captum's riemann_trapezoid weights are 1/n each with the two ends halved:
                # they sum to (n - 1)/n. Times n/(n - 1) is the standard trapezoid rule over
                # n - 1 intervals, which is integrad's trapezoid. Other methods: unchanged.
                scale = n_steps / (n_steps - 1) if method == "riemann_trapezoid" else 1.0
                attr = attr * scale
                sums = attr.sum(dim=1)
                conv = sums - (f_x - f_b)
                if scale == 1.0:
                    assert torch.allclose(conv, delta.double(), atol=1e-4), (conv, delta)
                stem = f"ig_{objective}_{bname}_{tag}"
                np.save(os.path.join(model_dir, f"{stem}.npy"), attr.float().numpy())
                out[stem] = {
                    "objective": objective, "baseline": bname,
                    "captum_method": method, "captum_n_steps": n_steps,
                    "integrad_method": "GAUSS_LEGENDRE" if tag.startswith("gl")
                    else "TRAPEZOID",
                    "integrad_steps": 64,
                    "weight_scale": scale,
                    "score_input": f_x.tolist(), "score_baseline": f_b.tolist(),
                    "attribution_sum": sums.tolist(), "convergence_delta": conv.tolist(),
                    "captum_convergence_delta": delta.double().tolist(),
                }
                print(f"  {stem}: max |delta| {float(conv.abs().max()):.3g} "
                      f"(Captum's own {float(delta.abs().max()):.3g})")
    return out


def main():
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)

    meta = {
        "versions": {"torch": torch.__version__, "captum": captum.__version__,
                     "numpy": np.__version__, "scikit-learn": sklearn.__version__,
                     "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "split": {"function": "sklearn.model_selection.train_test_split",
                  "test_size": TEST_SIZE, "random_state": SEED},
        "rows": f"the first {ROWS} rows of each test split (inputs.npy)",
        "target": 0,
        "models": {},
    }

    # ---- breast cancer: cancer-logit and cancer-sigmoid ---------------------------------
    ds = load_breast_cancer()
    assert list(ds.target_names) == ["malignant", "benign"]
    X = ds.data.astype(np.float32)
    t = (1 - ds.target).astype(np.float32)  # 1 = malignant, the model's positive class
    Xtr, Xte, ttr, tte = train_test_split(
        X, t, test_size=TEST_SIZE, random_state=SEED, stratify=t)
    mean = Xtr.astype(np.float64).mean(axis=0).astype(np.float32)
    std = Xtr.astype(np.float64).std(axis=0).astype(np.float32)
    assert np.all(std > 0)

    torch.manual_seed(SEED)
    logit_model = nn.Sequential(Standardise(mean, std), mlp(30))
    loss = train(logit_model, torch.from_numpy(Xtr), torch.from_numpy(ttr)[:, None],
                 nn.BCEWithLogitsLoss(), epochs=EPOCHS, lr=LR)
    sig_model = WithSigmoid(logit_model).eval()
    with torch.no_grad():
        pred_te = (logit_model(torch.from_numpy(Xte))[:, 0] > 0).numpy().astype(np.float32)
        pred_tr = (logit_model(torch.from_numpy(Xtr))[:, 0] > 0).numpy().astype(np.float32)
    acc_te = float((pred_te == tte).mean())
    acc_tr = float((pred_tr == ttr).mean())
    print(f"breast cancer: train loss {loss:.4f}, train accuracy {acc_tr:.4f}, "
          f"test accuracy {acc_te:.4f} ({int((pred_te == tte).sum())}/{len(tte)})")

    rows = np.ascontiguousarray(Xte[:ROWS])
    med = np.median(Xtr, axis=0).astype(np.float32)
    zeros = np.zeros(30, dtype=np.float32)
    x = torch.from_numpy(rows)
    training = {"data_set": "sklearn.datasets.load_breast_cancer",
                "positive_class": "malignant (label 1 - sklearn target)",
                "n_train": len(Xtr), "n_test": len(Xte), "epochs": EPOCHS,
                "optimiser": f"Adam lr {LR:g}, full batch", "loss": "BCEWithLogitsLoss",
                "train_loss": loss, "train_accuracy": acc_tr, "test_accuracy": acc_te,
                "test_labels_of_rows": tte[:ROWS].tolist()}

    for name, model, out_name, objectives in [
        ("cancer-logit", logit_model, "logit", [
            ("logit", logit_model),
            ("probability", lambda v: torch.sigmoid(logit_model(v))),
        ]),
        ("cancer-sigmoid", sig_model, "probability", [
            ("probability", sig_model),
            ("logit", sig_model.logit_model),
        ]),
    ]:
        d = os.path.join(OUT, name)
        path = os.path.join(d, "model.onnx")
        m = export(model, 30, out_name, path)
        nodes = [n.op_type for n in m.graph.node]
        assert nodes[0] == "Sub", nodes
        if name == "cancer-sigmoid":
            assert nodes[-1] == "Sigmoid", nodes
            assert list(m.graph.node[-1].output) == ["probability"]
        else:
            assert "Sigmoid" not in nodes, nodes
        print(f"{name}: ONNX nodes {nodes}")
        write_lines(os.path.join(d, "labels.txt"), ["malignant"])
        write_lines(os.path.join(d, "features.txt"), list(ds.feature_names))
        np.save(os.path.join(d, "inputs.npy"), rows)
        np.save(os.path.join(d, "baseline_zeros.npy"), zeros)
        np.save(os.path.join(d, "baseline_median.npy"), med)
        got, err = ort_check(path, model, rows, out_name)
        cases = captum_cases(d, objectives, x, [("zeros", zeros), ("median", med)])
        meta["models"][name] = {
            "output": out_name, "onnx_nodes": nodes, "training": training,
            "ort_outputs": got[:, 0].astype(np.float64).tolist(),
            "ort_vs_torch_max_abs_diff": err,
            "cases": cases,
        }

    # ---- diabetes: diabetes-regression --------------------------------------------------
    ds = load_diabetes()
    X = ds.data.astype(np.float32)
    y = ds.target.astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=TEST_SIZE, random_state=SEED)
    # Train on the standardised target, then fold y_mean + y_std * out into the last Linear,
    # so the model is still Linear-ReLU-Linear and outputs progression in the data's units.
    y_mean = float(ytr.astype(np.float64).mean())
    y_std = float(ytr.astype(np.float64).std())
    torch.manual_seed(SEED)
    reg = mlp(10)
    loss = train(reg, torch.from_numpy(Xtr), torch.from_numpy((ytr - y_mean) / y_std)[:, None],
                 nn.MSELoss(), epochs=EPOCHS, lr=LR)
    with torch.no_grad():
        last = reg[2]
        last.weight.mul_(y_std)
        last.bias.mul_(y_std).add_(y_mean)
        p_te = reg(torch.from_numpy(Xte))[:, 0].double().numpy()
        p_tr = reg(torch.from_numpy(Xtr))[:, 0].double().numpy()

    def r2(p, t):
        t = t.astype(np.float64)
        return float(1 - ((t - p) ** 2).sum() / ((t - t.mean()) ** 2).sum())

    r2_te, r2_tr = r2(p_te, yte), r2(p_tr, ytr)
    print(f"diabetes: train loss (standardised) {loss:.4f}, train R^2 {r2_tr:.4f}, "
          f"test R^2 {r2_te:.4f}")

    name, out_name = "diabetes-regression", "progression"
    d = os.path.join(OUT, name)
    path = os.path.join(d, "model.onnx")
    m = export(reg, 10, out_name, path)
    nodes = [n.op_type for n in m.graph.node]
    print(f"{name}: ONNX nodes {nodes}")
    rows = np.ascontiguousarray(Xte[:ROWS])
    med = np.median(Xtr, axis=0).astype(np.float32)
    zeros = np.zeros(10, dtype=np.float32)
    write_lines(os.path.join(d, "features.txt"), list(ds.feature_names))
    np.save(os.path.join(d, "inputs.npy"), rows)
    np.save(os.path.join(d, "baseline_zeros.npy"), zeros)
    np.save(os.path.join(d, "baseline_median.npy"), med)
    got, err = ort_check(path, reg, rows, out_name)
    cases = captum_cases(d, [("output", reg)], torch.from_numpy(rows),
                         [("zeros", zeros), ("median", med)])
    meta["models"][name] = {
        "output": out_name, "onnx_nodes": nodes,
        "training": {"data_set": "sklearn.datasets.load_diabetes (scaled features)",
                     "n_train": len(Xtr), "n_test": len(Xte), "epochs": EPOCHS,
                     "optimiser": f"Adam lr {LR:g}, full batch",
                     "loss": "MSELoss on (y - train mean) / train std, folded back after",
                     "train_loss_standardised": loss,
                     "train_r2": r2_tr, "test_r2": r2_te,
                     "test_targets_of_rows": yte[:ROWS].astype(np.float64).tolist()},
        "ort_outputs": got[:, 0].astype(np.float64).tolist(),
        "ort_vs_torch_max_abs_diff": err,
        "cases": cases,
    }

    with open(os.path.join(OUT, "captum.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
