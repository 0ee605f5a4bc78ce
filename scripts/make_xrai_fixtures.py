#!/usr/bin/env python3
"""Reference XRAI results from PAIR's saliency package, for src/ig/xrai.rs's tests.

For each sample photo (tests/data/{coffee,chelsea,rocket}_input.npy, model space), runs PAIR's
`XRAI().GetMaskWithDetails` end to end on the PyTorch EfficientNet-Lite0 that
models/efficientnet-lite0/model.onnx was exported from (scripts/make_demo_model.py's
`load_model`): PAIR's own Integrated Gradients (black and white baselines, averaged), its
Felzenszwalb segments (scikit-image) and its greedy region ranking. Records what goes in and
what comes out, in tests/data/techniques/ (see the README there):

- xrai_<photo>_attr.npy: float32 [224, 224], the attribution XRAI ranks (PAIR's IG, averaged
  over the two baselines, then the max over channels);
- xrai_<photo>_labels.npy: int64 [224, 224], scikit-image's Felzenszwalb labels at PAIR's six
  scales (50, 100, 150, 250, 500, 1200), captured as PAIR computes them, packed 10 bits per
  scale: label at scale k = (value >> 10 k) & 1023;
- xrai_<photo>_map.npy: float32 [224, 224], PAIR's XRAI map (each pixel its region's gain);
- xrai_<photo>_regions.npy: float32 [regions, 2], per rank 1, 2, ...: gain, pixel count;
- xrai_coffee_regions_area0.3.npy: the same for coffee with area_threshold 0.3 (PAIR's `_xrai`
  on the same attribution and segments).

Re-make with (a few minutes on a CPU):

    .venv-dev/bin/python scripts/make_xrai_fixtures.py
"""

import os
import sys
from pathlib import Path

import numpy as np
import saliency.core as saliency
import torch
from saliency.core import xrai as pair_xrai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_demo_model import load_model  # noqa: E402  (the same weights as model.onnx)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
OUT = DATA / "techniques"

# Photo, the class explained (its top-1 from the fixture logits; see tests/data/README.md).
PHOTOS = [("coffee", 967), ("chelsea", 282), ("rocket", 657)]
# PAIR's default is 100 IG steps; 50 keeps the script quick and changes nothing XRAI does.
STEPS = 50
BATCH = 25
LABEL_BITS = 10


def regions_of(xmap, ranks):
    """(gain, pixel count) per rank, from PAIR's map and integer segments."""
    regions = []
    for rank in range(1, ranks.max() + 1):
        where = ranks == rank
        gains = np.unique(xmap[where])
        assert len(gains) == 1, (rank, gains)
        regions.append((gains[0], where.sum()))
    return np.array(regions, dtype=np.float32)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = load_model()

    def call_model(images, call_model_args=None, expected_keys=None):
        # PAIR hands over HWC batches (float64: its path points are float64 alphas times the
        # float32 input); the model takes float32 NCHW.
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2), np.float32))
        x.requires_grad_(True)
        logits = model(x)
        target = call_model_args["target"]
        grads = torch.autograd.grad(logits[:, target].sum(), x)[0]
        return {saliency.INPUT_OUTPUT_GRADIENTS: grads.numpy().transpose(0, 2, 3, 1)}

    # Record the label images PAIR's segmentation computes, as it computes them.
    captured = []
    felzenszwalb = pair_xrai.segmentation.felzenszwalb

    def capture(*args, **kwargs):
        labels = felzenszwalb(*args, **kwargs)
        captured.append(labels)
        return labels

    pair_xrai.segmentation.felzenszwalb = capture

    for photo, target in PHOTOS:
        x = np.load(DATA / f"{photo}_input.npy").transpose(1, 2, 0).copy()
        assert x.dtype == np.float32 and x.shape == (224, 224, 3)
        params = pair_xrai.XRAIParameters(steps=STEPS, return_ig_attributions=True,
                                          return_xrai_segments=True)
        captured.clear()
        out = pair_xrai.XRAI().GetMaskWithDetails(
            x, call_model, call_model_args={"target": target}, batch_size=BATCH,
            extra_parameters=params)

        attr = np.mean(out.ig_attribution, axis=0).max(axis=-1)
        assert attr.dtype == np.float32, attr.dtype
        assert len(captured) == len(pair_xrai._FELZENSZWALB_SCALE_VALUES)
        packed = np.zeros((224, 224), dtype=np.int64)
        for k, labels in enumerate(captured):
            assert labels.min() == 0 and labels.max() < 1 << LABEL_BITS, labels.max()
            packed |= labels.astype(np.int64) << (LABEL_BITS * k)
        counts = [int(labels.max()) + 1 for labels in captured]

        # The map PAIR returns is float64 holding float32 gains: float32 keeps it exactly.
        xmap = out.attribution_mask
        assert np.array_equal(xmap.astype(np.float32).astype(np.float64), xmap)
        regions = regions_of(xmap, out.segments)

        np.save(OUT / f"xrai_{photo}_attr.npy", attr)
        np.save(OUT / f"xrai_{photo}_labels.npy", packed)
        np.save(OUT / f"xrai_{photo}_map.npy", xmap.astype(np.float32))
        np.save(OUT / f"xrai_{photo}_regions.npy", regions)
        print(f"{photo}: segments per scale {counts}, {len(regions)} regions, "
              f"top gains {regions[:3, 0]}")

        if photo == "coffee":
            # The same ranking stopped once 30 % of the image is covered.
            segs = pair_xrai._get_segments_felzenszwalb(x)
            amap, ranks = pair_xrai.XRAI._xrai(attr, segs, area_perc_th=0.3, min_pixel_diff=50,
                                               integer_segments=True)
            regions = regions_of(amap, ranks)
            np.save(OUT / "xrai_coffee_regions_area0.3.npy", regions)
            print(f"coffee, area_threshold 0.3: {len(regions)} regions")

    pair_xrai.segmentation.felzenszwalb = felzenszwalb


if __name__ == "__main__":
    main()
