#!/usr/bin/env python3
"""Copy the sample photos and make the Python reference fixtures in tests/data/.

1. Copies chelsea.png, coffee.png and rocket.jpg byte for byte from the installed
   scikit-image's bundled data folder into samples/ (and checks any copy already
   there is identical).
2. Preprocesses samples/chelsea.png and samples/coffee.png (and rocket.jpg) with
   the [input] section of models/efficientnet-lite0/integrad.toml, as written out
   in scripts/preprocess.py, and runs models/efficientnet-lite0/model.onnx on
   the result with ONNX Runtime (Python).
3. Writes, in tests/data/ (all .npy little-endian, C order):
     NAME_crop.npy        uint8   [224, 224, 3]  RGB after resize + centre crop
     NAME_input.npy       float32 [3, 224, 224]  model input (NCHW, batch dim dropped)
     NAME_logits_ort.npy  float32 [1000]         ORT logits for that input, batch of 1
     batch_input.npy      float32 [2, 3, 224, 224]  chelsea, coffee stacked
     batch_logits_ort.npy float32 [2, 1000]         ORT logits for that batch
   for NAME in chelsea, coffee, rocket.

Run after scripts/make_demo_model.py:
    .venv-dev/bin/python scripts/make_reference_fixtures.py
"""

import hashlib
import os
import shutil
import sys

import numpy as np
import onnxruntime as ort
import skimage
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import preprocess as pp  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(REPO, "models", "efficientnet-lite0")
SAMPLES = os.path.join(REPO, "samples")
OUT = os.path.join(REPO, "tests", "data")
SKIMAGE_DATA = os.path.join(os.path.dirname(skimage.__file__), "data")

SAMPLE_FILES = ["chelsea.png", "coffee.png", "rocket.jpg"]
FIXTURES = {"chelsea": "chelsea.png", "coffee": "coffee.png", "rocket": "rocket.jpg"}
BATCH = ["chelsea", "coffee"]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def copy_samples():
    os.makedirs(SAMPLES, exist_ok=True)
    print(f"samples from scikit-image {skimage.__version__} ({SKIMAGE_DATA})")
    for name in SAMPLE_FILES:
        src = os.path.join(SKIMAGE_DATA, name)
        dst = os.path.join(SAMPLES, name)
        if os.path.exists(dst):
            assert sha256(dst) == sha256(src), f"{dst} differs from {src}"
        else:
            shutil.copyfile(src, dst)
        img = Image.open(dst)
        print(f"  {name}: {img.format} {img.mode} {img.size[0]}x{img.size[1]}, "
              f"{os.path.getsize(dst)} bytes, sha256 {sha256(dst)}")


def save(name, arr):
    path = os.path.join(OUT, name)
    np.save(path, np.ascontiguousarray(arr))
    print(f"  {name}: {arr.dtype} {list(arr.shape)}")


def main():
    copy_samples()
    cfg = pp.load_config(os.path.join(MODEL_DIR, "integrad.toml"))
    inp, outp = cfg["input"], cfg["output"]
    assert inp["layout"] == "NCHW" and outp["kind"] == "logits"
    print(f"config [input]: scale {inp['scale']} mean {inp['mean']} std {inp['std']}")
    labels = open(os.path.join(MODEL_DIR, outp["labels"]), encoding="utf-8").read().splitlines()
    sess = ort.InferenceSession(os.path.join(MODEL_DIR, "model.onnx"),
                                providers=["CPUExecutionProvider"])
    os.makedirs(OUT, exist_ok=True)
    print(f"fixtures in {OUT} (onnxruntime {ort.__version__}):")

    inputs = {}
    logits = {}
    for name, file in FIXTURES.items():
        img = pp.load_rgb(os.path.join(SAMPLES, file))
        crop = pp.resize_shorter_side_crop(img, inp["height"], inp["width"], inp["crop_fraction"])
        x = pp.normalise(crop, inp["scale"], inp["mean"], inp["std"], inp["layout"])
        # The two routes to the input tensor agree.
        assert np.array_equal(x, pp.preprocess(os.path.join(SAMPLES, file), inp))
        y = sess.run([outp["name"]], {inp["name"]: x[None]})[0][0]
        assert x.shape == (3, 224, 224) and x.dtype == np.float32
        assert y.shape == (1000,) and y.dtype == np.float32
        inputs[name], logits[name] = x, y
        save(f"{name}_crop.npy", np.asarray(crop, dtype=np.uint8))
        save(f"{name}_input.npy", x)
        save(f"{name}_logits_ort.npy", y)

    bx = np.stack([inputs[n] for n in BATCH])
    by = sess.run([outp["name"]], {inp["name"]: bx})[0]
    assert by.shape == (2, 1000) and by.dtype == np.float32
    batch_vs_single = max(float(np.max(np.abs(by[i] - logits[n]))) for i, n in enumerate(BATCH))
    print(f"  batch of 2 vs batch of 1: max abs logit diff {batch_vs_single:.3e}")
    assert batch_vs_single < 1e-3
    save("batch_input.npy", bx)
    save("batch_logits_ort.npy", by)

    for name in FIXTURES:
        prob = pp.softmax(logits[name])
        top = np.argsort(-prob)[:5]
        print(f"{name} top-5: " + "; ".join(
            f"{i} {labels[i]} {prob[i]:.4f} (logit {logits[name][i]:.4f})" for i in top))


if __name__ == "__main__":
    main()
