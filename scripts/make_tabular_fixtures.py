#!/usr/bin/env python3
"""Make the two-input penguins demo model (models/penguins/) and its Captum Integrated
Gradients fixtures (tests/data/tabular/).

A small real tabular classifier, trained here on the Palmer penguins data set that the
palmerpenguins wheel ships (no download), exported to ONNX with two inputs:

- `numeric` float32 [batch, 4]: bill_length_mm, bill_depth_mm, flipper_length_mm,
  body_mass_g in raw units; the training split's mean and (population) std are folded into
  the graph as its first ops, (x - mean) / std.
- `categorical` int64 [batch, 2]: island id (Biscoe 0, Dream 1, Torgersen 2) and sex id
  (female 0, male 1). The graph adds per-column offsets [0, 3] to the ids and looks the sums
  up in ONE shared embedding table (5 rows x 3): Add(categorical, offsets) -> Gather(table,
  ...) -> [batch, 2, 3], flattened to [batch, 6].
- concat [standardised numeric, embedding] -> Linear(10,16)-ReLU-Linear(16,3) -> `logits`
  float32 [batch, 3] (Adelie 0, Chinstrap 1, Gentoo 2).

The Captum references (float64) are for the "equivalent one-hot model": the same function
with the lookup replaced by one-hot vectors times the table, so that IG over (numeric,
one-hot) with a zero one-hot baseline is IG at the embedding output with a zero-vector
baseline. What each file is and the exact Captum calls: tests/data/tabular/README.md; the
model: models/penguins/README.md.

Everything is deterministic: fixed seed, fixed split, one CPU thread.

Run with the dev virtualenv (scripts/requirements-dev.txt):
    .venv-dev/bin/python scripts/make_tabular_fixtures.py
"""

import importlib.metadata
import json
import os

import captum
import numpy as np
import onnx
import onnxruntime as ort
import sklearn
import torch
from captum.attr import IntegratedGradients
from onnx import numpy_helper
from palmerpenguins import load_penguins
from sklearn.model_selection import train_test_split
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(REPO, "models", "penguins")
OUT = os.path.join(REPO, "tests", "data", "tabular")

SEED = 0
TEST_SIZE = 0.25
ROWS = 8  # the first ROWS rows of the test split get Captum references
ROWS_BATCH = 64  # the first ROWS_BATCH test rows for the batch-invariance test

NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
CATEGORICAL = ["island", "sex"]
# Ids are the sorted category names; the script asserts the data has exactly these.
LEVELS = {
    "island": ["Biscoe", "Dream", "Torgersen"],
    "sex": ["female", "male"],
}
SPECIES = ["Adelie", "Chinstrap", "Gentoo"]
OFFSETS = [0, 3]  # first table row of each categorical column
TABLE_ROWS = 5  # 3 islands + 2 sexes
EMBED_DIM = 3
HIDDEN = 16

EPOCHS = 300
LR = 1e-3  # Adam, full batch; a gentle fit keeps the logits moderate (|logit| < 4 on the
# test split) and the probabilities unsaturated (median top-1 probability ~0.95)

# (file tag, Captum method, Captum n_steps). integrad trapezoid steps=m evaluates m + 1
# alphas = Captum riemann_trapezoid n_steps=m + 1 (normalised, see below); integrad
# Gauss-Legendre steps=m = Captum gausslegendre n_steps=m.
METHODS = [
    ("gl64", "gausslegendre", 64),
    ("trap64", "riemann_trapezoid", 65),
]

TOL_ORT = 1e-5  # ORT vs torch, absolute (|logits| here are < 20)


class Penguins(nn.Module):
    """The demo model: f(numeric [b,4] float32, categorical [b,2] int64) -> logits [b,3]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("std", torch.from_numpy(std))
        self.register_buffer("offsets", torch.tensor(OFFSETS, dtype=torch.int64))
        self.embedding = nn.Embedding(TABLE_ROWS, EMBED_DIM)
        self.mlp = nn.Sequential(
            nn.Linear(len(NUMERIC) + len(CATEGORICAL) * EMBED_DIM, HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, len(SPECIES)))

    def head(self, numeric, embedded):
        """Everything after the lookup: embedded is [b, 2, 3]."""
        z = (numeric - self.mean) / self.std
        return self.mlp(torch.cat([z, embedded.flatten(1)], dim=1))

    def forward(self, numeric, categorical):
        return self.head(numeric, self.embedding(categorical + self.offsets))


def one_hot_forward(model, numeric, onehot):
    """The same function as `model` with the lookup replaced by one-hot [b, 5] @ table.

    Column c's embedding is onehot[:, rows_c] @ table[rows_c], rows_c its slice of the
    table (island rows 0..2, sex rows 3..4). For an exact one-hot this is table[id + offset];
    on the IG path alpha * onehot it is alpha * table[id + offset].
    """
    table = model.embedding.weight
    bounds = OFFSETS + [TABLE_ROWS]
    cols = [onehot[:, bounds[c]:bounds[c + 1]] @ table[bounds[c]:bounds[c + 1]]
            for c in range(len(CATEGORICAL))]
    return model.head(numeric, torch.stack(cols, dim=1))


def to_onehot(categorical):
    """int64 [b, 2] ids -> float64 [b, 5] one-hot per column, at id + offset."""
    out = np.zeros((len(categorical), TABLE_ROWS), dtype=np.float64)
    for c, off in enumerate(OFFSETS):
        out[np.arange(len(categorical)), categorical[:, c] + off] = 1.0
    return out


def relu_crossings(model, x_num, x_emb, b_num, grid=10001):
    """Per row, how often the hidden ReLU's inputs change sign along the IG path (float64,
    on `grid` evenly spaced alphas): where quadrature error comes from (the integrand is
    piecewise smooth, with a kink at each)."""
    alphas = torch.linspace(0, 1, grid, dtype=torch.float64)[:, None]
    out = []
    with torch.no_grad():
        for r in range(len(x_num)):
            num = b_num[r] + alphas * (x_num[r] - b_num[r])
            z = (num - model.mean) / model.std
            h = model.mlp[0](torch.cat([z, alphas * x_emb[r].flatten()[None]], dim=1))
            out.append(int((torch.sign(h[1:]) != torch.sign(h[:-1])).sum()))
    return out


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(f"{line}\n")


def num_text(v):
    """A float64 data value as the shortest text that reads back to it (39.1, 3750.0)."""
    s = repr(float(v))
    assert float(s) == float(v), (s, v)
    return s


def write_rows(path_csv, numeric, categorical, species=None):
    header = NUMERIC + CATEGORICAL + (["species"] if species is not None else [])
    lines = [",".join(header)]
    for i in range(len(numeric)):
        cells = [num_text(v) for v in numeric[i]] + [str(int(v)) for v in categorical[i]]
        if species is not None:
            cells.append(str(int(species[i])))
        lines.append(",".join(cells))
    write_lines(path_csv, lines)


def write_jsonl(path, numeric, categorical):
    lines = []
    for i in range(len(numeric)):
        obj = {name: float(numeric[i, j]) for j, name in enumerate(NUMERIC)}
        obj.update({name: int(categorical[i, j]) for j, name in enumerate(CATEGORICAL)})
        lines.append(json.dumps(obj))
    write_lines(path, lines)


def load_data():
    df = load_penguins()
    df = df[NUMERIC + CATEGORICAL + ["species"]].dropna().reset_index(drop=True)
    for col, levels in LEVELS.items():
        assert sorted(df[col].unique().tolist()) == levels, (col, df[col].unique())
    assert sorted(df["species"].unique().tolist()) == SPECIES
    num = df[NUMERIC].to_numpy(dtype=np.float64)
    cat = np.stack([df[c].map({v: i for i, v in enumerate(LEVELS[c])}).to_numpy()
                    for c in CATEGORICAL], axis=1).astype(np.int64)
    y = df["species"].map({v: i for i, v in enumerate(SPECIES)}).to_numpy().astype(np.int64)
    return num, cat, y


def export(model, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    dummy = (torch.zeros(2, len(NUMERIC), dtype=torch.float32),
             torch.zeros(2, len(CATEGORICAL), dtype=torch.int64))
    torch.onnx.export(
        model, dummy, path, dynamo=False, opset_version=17,
        input_names=["numeric", "categorical"], output_names=["logits"],
        dynamic_axes={"numeric": {0: "batch"}, "categorical": {0: "batch"},
                      "logits": {0: "batch"}})
    m = onnx.load(path)
    onnx.checker.check_model(m)
    g = m.graph
    assert [i.name for i in g.input] == ["numeric", "categorical"], [i.name for i in g.input]
    assert [o.name for o in g.output] == ["logits"], [o.name for o in g.output]
    for vi, dtype, width in [(g.input[0], onnx.TensorProto.FLOAT, len(NUMERIC)),
                             (g.input[1], onnx.TensorProto.INT64, len(CATEGORICAL)),
                             (g.output[0], onnx.TensorProto.FLOAT, len(SPECIES))]:
        assert vi.type.tensor_type.elem_type == dtype, vi
        dims = vi.type.tensor_type.shape.dim
        assert len(dims) == 2 and dims[0].dim_param == "batch", dims
        assert dims[1].dim_value == width, dims
    return m


def check_lookup_pattern(m):
    """Assert Add(categorical, const int64 [0, 3]) -> Gather(initializer table [5, 3], .)."""
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consts = {}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    adds = [n for n in g.node if n.op_type == "Add" and "categorical" in n.input]
    assert len(adds) == 1, [n.name for n in adds]
    add = adds[0]
    (other,) = [i for i in add.input if i != "categorical"]
    offsets = inits.get(other, consts.get(other))
    assert offsets is not None, f"Add's other input {other} is not a constant"
    assert offsets.dtype == np.int64 and offsets.tolist() == OFFSETS, offsets
    gathers = [n for n in g.node if n.op_type == "Gather" and add.output[0] in n.input]
    assert len(gathers) == 1, gathers
    gather = gathers[0]
    assert list(gather.input)[1] == add.output[0], gather
    table_name = gather.input[0]
    assert table_name in inits, f"Gather's data {table_name} is not an initializer"
    table = inits[table_name]
    assert table.shape == (TABLE_ROWS, EMBED_DIM) and table.dtype == np.float32, table.shape
    axis = [a.i for a in gather.attribute if a.name == "axis"]
    assert axis in ([], [0]), axis
    return {
        "add_node": add.name, "offsets_constant": other,
        "offsets_constant_kind": "initializer" if other in inits else "Constant node",
        "offsets": offsets.tolist(), "gather_node": gather.name,
        "table_initializer": table_name, "table_shape": list(table.shape),
    }, table


def ort_check(path, model, num, cat):
    """ORT on the exported model vs torch, on the rows together and one at a time."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {"numeric": num, "categorical": cat}
    got = sess.run(["logits"], feeds)[0]
    with torch.no_grad():
        want = model(torch.from_numpy(num), torch.from_numpy(cat)).numpy()
    assert got.shape == (len(num), len(SPECIES)) and got.dtype == np.float32
    err = float(np.max(np.abs(got - want)))
    assert err <= TOL_ORT, (err, got, want)
    err_one = 0.0
    for i in range(len(num)):
        one = sess.run(["logits"], {"numeric": num[i:i + 1], "categorical": cat[i:i + 1]})[0]
        err_one = max(err_one, float(np.max(np.abs(one - want[i:i + 1]))))
    assert err_one <= TOL_ORT, err_one
    print(f"{os.path.relpath(path, REPO)}: ORT vs torch max |diff| {err:.3g} batched, "
          f"{err_one:.3g} one row at a time ({len(num)} test rows)")
    return sess, got, err, err_one


def main():
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(MODEL_DIR, exist_ok=True)
    os.makedirs(OUT, exist_ok=True)

    # ---- data and split ------------------------------------------------------------------
    num, cat, y = load_data()
    num_tr, num_te, cat_tr, cat_te, y_tr, y_te = train_test_split(
        num, cat, y, test_size=TEST_SIZE, random_state=SEED, stratify=y)
    print(f"penguins: {len(y)} complete rows, {len(y_tr)} train, {len(y_te)} test")
    mean = num_tr.mean(axis=0).astype(np.float32)
    std = num_tr.std(axis=0).astype(np.float32)  # population std (ddof 0)
    assert np.all(std > 0)
    num_tr32, num_te32 = num_tr.astype(np.float32), num_te.astype(np.float32)

    # ---- train ---------------------------------------------------------------------------
    torch.manual_seed(SEED)
    model = Penguins(mean, std)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    xn, xc, yt = torch.from_numpy(num_tr32), torch.from_numpy(cat_tr), torch.from_numpy(y_tr)
    model.train()
    for _ in range(EPOCHS):
        opt.zero_grad()
        loss = loss_fn(model(xn, xc), yt)
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    loss = float(loss.item())
    with torch.no_grad():
        logits_tr = model(xn, xc)
        logits_te = model(torch.from_numpy(num_te32), torch.from_numpy(cat_te))
    acc_tr = float((logits_tr.argmax(1).numpy() == y_tr).mean())
    correct_te = int((logits_te.argmax(1).numpy() == y_te).sum())
    acc_te = correct_te / len(y_te)
    abs_logits = logits_te.abs().numpy()
    print(f"train loss {loss:.4f}, train accuracy {acc_tr:.4f}, "
          f"test accuracy {acc_te:.4f} ({correct_te}/{len(y_te)})")
    print(f"test |logit|: max {abs_logits.max():.2f}, "
          f"{(abs_logits < 10).mean():.1%} below 10; "
          f"top-1 probability median {torch.softmax(logits_te, 1).max(1).values.median():.4f}")

    # ---- export and check ----------------------------------------------------------------
    path = os.path.join(MODEL_DIR, "model.onnx")
    m = export(model, path)
    nodes = [n.op_type for n in m.graph.node]
    print(f"ONNX nodes {nodes}")
    lookup, table = check_lookup_pattern(m)
    assert np.array_equal(table, model.embedding.weight.numpy())
    print(f"lookup: Add({lookup['add_node']}: categorical + {lookup['offsets_constant']} "
          f"= {lookup['offsets']}) -> Gather({lookup['gather_node']}: "
          f"{lookup['table_initializer']} {lookup['table_shape']})")
    sess, ort_te, err_b, err_1 = ort_check(path, model, num_te32, cat_te)

    write_lines(os.path.join(MODEL_DIR, "labels.txt"), SPECIES)
    write_lines(os.path.join(MODEL_DIR, "features.txt"), NUMERIC)
    write_lines(os.path.join(MODEL_DIR, "categorical.txt"), CATEGORICAL)
    write_rows(os.path.join(MODEL_DIR, "reference.csv"), num_tr, cat_tr)
    write_rows(os.path.join(MODEL_DIR, "rows.csv"), num_te, cat_te, y_te)
    write_jsonl(os.path.join(MODEL_DIR, "rows.jsonl"), num_te, cat_te)

    # ---- Captum references ---------------------------------------------------------------
    rows_num = np.ascontiguousarray(num_te32[:ROWS])
    rows_cat = np.ascontiguousarray(cat_te[:ROWS])
    np.save(os.path.join(OUT, "numeric.npy"), rows_num)
    np.save(os.path.join(OUT, "categorical.npy"), rows_cat)
    nb = min(ROWS_BATCH, len(y_te))
    np.save(os.path.join(OUT, "rows64_numeric.npy"), np.ascontiguousarray(num_te32[:nb]))
    np.save(os.path.join(OUT, "rows64_categorical.npy"), np.ascontiguousarray(cat_te[:nb]))
    median = np.median(num_tr32, axis=0).astype(np.float32)
    zeros = np.zeros(len(NUMERIC), dtype=np.float32)
    np.save(os.path.join(OUT, "baseline_median.npy"), median)
    np.save(os.path.join(OUT, "baseline_zeros.npy"), zeros)

    targets = ort_te[:ROWS].argmax(axis=1)
    with torch.no_grad():
        assert np.array_equal(targets, logits_te[:ROWS].argmax(1).numpy())
    dmodel = Penguins(mean, std)
    dmodel.load_state_dict(model.state_dict())
    dmodel = dmodel.double().eval()
    for p in dmodel.parameters():
        p.requires_grad_(False)
    x_num = torch.from_numpy(rows_num.astype(np.float64))
    x_cat = torch.from_numpy(rows_cat)
    x_hot = torch.from_numpy(to_onehot(rows_cat))
    with torch.no_grad():
        direct = dmodel(x_num, x_cat)
        via_hot = one_hot_forward(dmodel, x_num, x_hot)
    hot_err = float((direct - via_hot).abs().max())
    assert hot_err < 1e-12, hot_err
    assert np.array_equal(direct.argmax(1).numpy(), targets)
    target_t = torch.from_numpy(targets.astype(np.int64))

    objectives = [
        ("logit", lambda n, h: one_hot_forward(dmodel, n, h)),
        ("probability", lambda n, h: torch.softmax(one_hot_forward(dmodel, n, h), dim=1)),
    ]
    # Cross-check of the equivalence: IG at the embedding output (zero-vector baseline),
    # summed over each column's 3 dims, must equal the one-hot per-column attribution.
    emb_objectives = {
        "logit": lambda n, e: dmodel.head(n, e),
        "probability": lambda n, e: torch.softmax(dmodel.head(n, e), dim=1),
    }
    x_emb = dmodel.embedding(x_cat + dmodel.offsets)

    meta = {
        "versions": {"torch": torch.__version__, "captum": captum.__version__,
                     "numpy": np.__version__, "scikit-learn": sklearn.__version__,
                     "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     # the wheel's own palmerpenguins.__version__ is stale
                     "palmerpenguins": importlib.metadata.version("palmerpenguins")},
        "data": {
            "source": "palmerpenguins.load_penguins(), rows with a missing value in the "
                      "used columns dropped",
            "n_rows": len(y), "n_train": len(y_tr), "n_test": len(y_te),
            "numeric": NUMERIC, "categorical": CATEGORICAL,
            "encodings": {**LEVELS, "species": SPECIES},
        },
        "split": {"function": "sklearn.model_selection.train_test_split",
                  "test_size": TEST_SIZE, "random_state": SEED, "stratify": "species"},
        "model": {
            "path": "models/penguins/model.onnx", "onnx_nodes": nodes,
            "inputs": {"numeric": {"dtype": "float32", "shape": ["batch", len(NUMERIC)]},
                       "categorical": {"dtype": "int64",
                                       "shape": ["batch", len(CATEGORICAL)]}},
            "outputs": {"logits": {"dtype": "float32", "shape": ["batch", len(SPECIES)]}},
            "lookup": lookup,
            "standardise_mean": mean.astype(np.float64).tolist(),
            "standardise_std": std.astype(np.float64).tolist(),
            "training": {"epochs": EPOCHS, "optimiser": f"Adam lr {LR:g}, full batch",
                         "loss": "CrossEntropyLoss", "train_loss": loss,
                         "train_accuracy": acc_tr, "test_accuracy": acc_te,
                         "test_correct": correct_te},
            "test_max_abs_logit": float(abs_logits.max()),
            "ort_vs_torch_max_abs_diff": {"batched": err_b, "one_row_at_a_time": err_1},
        },
        "rows": {
            "what": f"the first {ROWS} rows of the test split (numeric.npy, categorical.npy)",
            "count": ROWS,
            "species": y_te[:ROWS].tolist(),
            "targets": targets.tolist(),
            "target_labels": [SPECIES[t] for t in targets],
            "onehot": to_onehot(rows_cat).astype(np.int64).tolist(),
            "ort_logits": ort_te[:ROWS].astype(np.float64).tolist(),
            "torch_float64_logits": direct.tolist(),
        },
        "rows64": {"count": nb, "what": f"the first {nb} rows of the test split"},
        "baselines": {"zeros": zeros.astype(np.float64).tolist(),
                      "median": median.astype(np.float64).tolist(),
                      "categorical": "zero embedding vector (one-hot baseline zeros)"},
        "cases": {},
    }

    max_delta = {tag: 0.0 for tag, _, _ in METHODS}
    max_emb_err = 0.0
    for objective, forward in objectives:
        for bname, b in [("zeros", zeros), ("median", median)]:
            b_num = torch.from_numpy(np.broadcast_to(b.astype(np.float64), x_num.shape).copy())
            b_hot = torch.zeros_like(x_hot)
            with torch.no_grad():
                f_x = forward(x_num, x_hot)[torch.arange(ROWS), target_t]
                f_b = forward(b_num, b_hot)[torch.arange(ROWS), target_t]
            if objective == objectives[0][0]:
                crossings = relu_crossings(dmodel, x_num, x_emb, b_num)
                meta["baselines"].setdefault("relu_sign_changes_on_path", {})[bname] = crossings
                print(f"  baseline {bname}: ReLU sign changes on each row's path {crossings}")
            for tag, method, n_steps in METHODS:
                ig = IntegratedGradients(forward)
                (a_num, a_hot), delta = ig.attribute(
                    (x_num, x_hot), baselines=(b_num, b_hot), target=target_t,
                    n_steps=n_steps, method=method, return_convergence_delta=True)
                assert a_num.dtype == torch.float64 and a_hot.dtype == torch.float64
                # Captum's riemann_trapezoid weights are 1/n each with the two ends halved:
                # they sum to (n - 1)/n. Times n/(n - 1) is the standard trapezoid rule over
                # n - 1 intervals, which is integrad's trapezoid. Other methods: unchanged.
                scale = n_steps / (n_steps - 1) if method == "riemann_trapezoid" else 1.0
                # (+ 0.0 turns the -0.0 that 0 * negative gradient gives into +0.0.)
                a_num = a_num.detach() * scale + 0.0
                a_hot = a_hot.detach() * scale + 0.0
                # Only the active one-hot entries can be non-zero (input = baseline = 0
                # elsewhere); per column, the sum over its slice = the active entry.
                assert torch.all(a_hot[x_hot == 0] == 0)
                bounds = OFFSETS + [TABLE_ROWS]
                a_cat = torch.stack([a_hot[:, bounds[c]:bounds[c + 1]].sum(1)
                                     for c in range(len(CATEGORICAL))], dim=1)
                sums = a_num.sum(1) + a_cat.sum(1)
                conv = sums - (f_x - f_b)
                if scale == 1.0:
                    assert torch.allclose(conv, delta, atol=1e-10), (conv, delta)

                # The embedding-level cross-check (same method, same steps).
                ig_e = IntegratedGradients(emb_objectives[objective])
                e_num, e_emb = ig_e.attribute(
                    (x_num, x_emb), baselines=(b_num, torch.zeros_like(x_emb)),
                    target=target_t, n_steps=n_steps, method=method)
                emb_err = max(float((e_num * scale - a_num).abs().max()),
                              float((e_emb.sum(2) * scale - a_cat).abs().max()))
                assert emb_err < 1e-10, emb_err
                max_emb_err = max(max_emb_err, emb_err)

                stem = f"ig_{objective}_{bname}_{tag}"
                np.save(os.path.join(OUT, f"{stem}_numeric.npy"), a_num.float().numpy())
                np.save(os.path.join(OUT, f"{stem}_categorical.npy"), a_cat.float().numpy())
                np.save(os.path.join(OUT, f"{stem}_onehot.npy"), a_hot.float().numpy())
                meta["cases"][stem] = {
                    "objective": objective, "baseline": bname,
                    "captum_method": method, "captum_n_steps": n_steps,
                    "integrad_method": "GAUSS_LEGENDRE" if tag.startswith("gl")
                    else "TRAPEZOID",
                    "integrad_steps": 64,
                    "weight_scale": scale,
                    "score_input": f_x.tolist(), "score_baseline": f_b.tolist(),
                    "numeric_sum": a_num.sum(1).tolist(),
                    "categorical_sum": a_cat.sum(1).tolist(),
                    "attribution_sum": sums.tolist(), "convergence_delta": conv.tolist(),
                    "captum_convergence_delta": delta.tolist(),
                }
                max_delta[tag] = max(max_delta[tag], float(conv.abs().max()))
                print(f"  {stem}: max |delta| {float(conv.abs().max()):.3g} "
                      f"(Captum's own {float(delta.abs().max()):.3g}), "
                      f"embedding-level check {emb_err:.2g}")
    meta["max_abs_convergence_delta"] = max_delta
    meta["embedding_level_check_max_abs_diff"] = max_emb_err
    print(f"max |sum - (F(x) - F(x'))|: {max_delta}")

    with open(os.path.join(OUT, "captum.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
