#!/usr/bin/env python3
"""Make the whole-model fixtures of the autodiff tests (tests/data/autodiff/).

PyTorch autograd, in float64 on the same weights as the ONNX models, gives the reference
gradients that integrad's gradient graphs (run by ONNX Runtime in float32) are compared with.
PyTorch is a dev-time tool only: nothing here runs at test time.

Produces, for each model, gradients of sum(cotangent * objective(output)) with respect to the
input for a batch of 3 rows with a different target class per row (one-hot cotangent rows):
  effnet_grad_logit.npy, effnet_grad_probability.npy   EfficientNet-Lite0 (the demo model,
      models/efficientnet-lite0/model.onnx) on tests/data/{chelsea,coffee,rocket}_input.npy
  inception.onnx  a small Inception-style CNN (BatchNorm, ReLU, overlapping MaxPool, parallel
      branches with AveragePool(count_include_pad=False), Concat, global pooling, Gemm),
      random weights, opset 13, TorchScript exporter
  inception_input.npy, inception_grad_logit.npy, inception_grad_probability.npy
  transformer.onnx  one pre-norm transformer encoder block (LayerNormalization, MatMul
      attention with Softmax, exact GELU as Erf, residuals) + mean pooling + linear head,
      random weights, opset 17, TorchScript exporter
  transformer_input.npy, transformer_grad_logit.npy, transformer_grad_probability.npy
  inception_dynamo.onnx, transformer_dynamo.onnx  the same two models (same weights, same
      reference gradients) from PyTorch's dynamo exporter (torch.onnx.export(dynamo=True),
      which needs onnxscript), opset 18
  targets.json  the target class of each row, per model

Run with the dev virtualenv (scripts/requirements-dev.txt):
    .venv-dev/bin/python scripts/make_autodiff_fixtures.py
"""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "data", "autodiff")
sys.path.insert(0, os.path.join(REPO, "scripts"))


def grads(model, x, targets, objective):
    """d sum_rows(objective(model(x))[row, target[row]]) / dx in float64."""
    model = model.double().eval()
    x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = model(x)
    if objective == "probability":
        y = torch.softmax(y, dim=-1)
    c = torch.zeros_like(y)
    c[torch.arange(len(targets)), torch.tensor(targets)] = 1.0
    (y * c).sum().backward()
    return x.grad.numpy()


def export(model, x, path, opset, dynamo=False):
    model = model.float().eval()
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=1024)
        prog = torch.onnx.export(
            model, (torch.tensor(x),), dynamo=True, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_shapes={"x": {0: batch}}, optimize=True, external_data=False,
        )
        prog.save(path)
    else:
        torch.onnx.export(
            model, (torch.tensor(x),), path, dynamo=False, export_params=True,
            opset_version=opset, do_constant_folding=True,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    onnx.checker.check_model(path, full_check=True)
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"input": x.astype(np.float32)})[0]
    with torch.no_grad():
        want = model(torch.tensor(x, dtype=torch.float32)).numpy()
    diff = float(np.max(np.abs(got - want)))
    ops = sorted({n.op_type for n in onnx.load(path).graph.node})
    print(f"{os.path.basename(path)}: ORT vs PyTorch max abs diff {diff:.2e}; ops {ops}")
    assert diff < 1e-4, diff


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)  # overlapping windows
        self.b1 = nn.Conv2d(8, 4, 1)
        self.b2a = nn.Conv2d(8, 4, 1)
        self.b2b = nn.Conv2d(4, 6, 3, padding=1)
        self.b3 = nn.Conv2d(8, 4, 1)
        self.b4 = nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(18, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.bn(self.stem(x))))
        a = F.relu(self.b1(x))
        b = F.relu(self.b2b(F.relu(self.b2a(x))))
        c = F.relu(self.b3(F.max_pool2d(x, 3, stride=1, padding=1)))
        d = F.relu(self.b4(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)))
        x = torch.cat([a, b, c, d], dim=1)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(x)


class Block(nn.Module):
    def __init__(self, dim=16, heads=2, classes=5):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = self.qkv(h).split(d, dim=-1)
        q = q.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        k = k.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        v = v.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        o = (a @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(o)
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return self.head(x.mean(dim=1))


def randomise_bn(model, gen):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def main():
    os.makedirs(OUT, exist_ok=True)
    targets = {}

    # EfficientNet-Lite0: the demo model's own weights (see scripts/make_demo_model.py).
    from make_demo_model import load_model
    effnet = load_model()
    x = np.stack([np.load(os.path.join(REPO, "tests", "data", f"{n}_input.npy"))
                  for n in ("chelsea", "coffee", "rocket")])
    targets["effnet"] = {"logit": [282, 967, 657], "probability": [285, 968, 744]}
    for objective, t in targets["effnet"].items():
        g = grads(effnet, x, t, objective)
        np.save(os.path.join(OUT, f"effnet_grad_{objective}.npy"), g.astype(np.float32))
        print(f"effnet {objective}: |grad| per row {np.linalg.norm(g.reshape(3, -1), axis=1)}")

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for name, model, shape, opset, classes in (
        ("inception", Inception(), (3, 3, 32, 32), 13, 10),
        ("transformer", Block(), (3, 8, 16), 17, 5),
    ):
        randomise_bn(model, gen)
        model.eval()
        x = torch.randn(*shape, generator=gen).numpy().astype(np.float32)
        path = os.path.join(OUT, f"{name}.onnx")
        export(model, x, path, opset)
        export(model, x, os.path.join(OUT, f"{name}_dynamo.onnx"), 18, dynamo=True)
        np.save(os.path.join(OUT, f"{name}_input.npy"), x)
        targets[name] = {"logit": [1, classes - 1, 2], "probability": [0, 3, classes - 2]}
        for objective, t in targets[name].items():
            g = grads(model, x, t, objective)
            np.save(os.path.join(OUT, f"{name}_grad_{objective}.npy"), g)
    with open(os.path.join(OUT, "targets.json"), "w") as f:
        json.dump(targets, f, indent=1)
        f.write("\n")
    print(f"versions: torch {torch.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {ort.__version__}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
