"""Reference outputs of scipy.ndimage.gaussian_filter for src/image/gaussian.rs's tests.

Writes tests/data/techniques/gaussian_*.npy (see tests/data/techniques/README.md). Re-make with:

    .venv-dev/bin/python scripts/make_gaussian_fixtures.py

The coffee photo's model input (tests/data/coffee_input.npy, float32 [3, 224, 224]) is blurred
over its two spatial axes (sigma 0 on the channel axis, as PAIR's Blur IG does) for each sigma and
boundary mode. A full output is 150,528 floats; the fixture keeps 12 whole rows and 12 whole
columns of each channel (the borders, where the boundary mode matters, and a few interior lines)
plus each channel's mean and mean square over all pixels, so that an error anywhere shows.
"""

from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "techniques"

SIGMAS = [0.8, 3.0, 50.0, 120.0]
# scipy's default 'reflect', and 'constant' with cval 0 (PAIR's Blur IG uses mode="constant").
MODES = [("reflect", 0.0), ("constant", 0.0)]
# Rows and columns kept: both borders (0-3, 220-223), the centre (111, 112) and two others.
LINES = [0, 1, 2, 3, 50, 111, 112, 200, 220, 221, 222, 223]

# Tiny 1-D arrays with sigma 10 (radius 40, far beyond the length: reflect wraps over and over),
# constant mode with cval 0.5 so that a wrong cval shows.
TINY_SIGMA = 10.0
TINY_CVAL = 0.5
TINY = {
    1: [0.75],
    2: [0.3, -1.2],
    5: [0.3, -1.2, 2.5, 0.7, -0.4],
}


def save(name, array):
    path = OUT / name
    np.save(path, np.ascontiguousarray(array))
    print(f"{path.relative_to(ROOT)}: {array.dtype} {list(array.shape)}")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    image = np.load(ROOT / "tests" / "data" / "coffee_input.npy")
    assert image.dtype == np.float32 and image.shape == (3, 224, 224), image.shape

    stats = np.zeros((len(MODES), len(SIGMAS), 3, 2), dtype=np.float32)
    for m, (mode, cval) in enumerate(MODES):
        for s, sigma in enumerate(SIGMAS):
            out = ndimage.gaussian_filter(image, sigma=[0.0, sigma, sigma], mode=mode, cval=cval)
            assert out.dtype == np.float32
            lines = np.stack([out[:, LINES, :], out[:, :, LINES].transpose(0, 2, 1)], axis=1)
            save(f"gaussian_coffee_{mode}_s{sigma:g}.npy", lines.astype(np.float32))
            wide = out.astype(np.float64)
            stats[m, s, :, 0] = wide.mean(axis=(1, 2))
            stats[m, s, :, 1] = (wide * wide).mean(axis=(1, 2))
    save("gaussian_coffee_stats.npy", stats)

    for n, values in TINY.items():
        x = np.array(values, dtype=np.float32)
        reflect = ndimage.gaussian_filter(x, TINY_SIGMA, mode="reflect")
        constant = ndimage.gaussian_filter(x, TINY_SIGMA, mode="constant", cval=TINY_CVAL)
        save(f"gaussian_tiny_{n}.npy", np.stack([x, reflect, constant]).astype(np.float32))

    # Two axes, each with its own sigma: the second pass reads the first pass's float32 output.
    x = np.array([[0.3, -1.2, 2.5, 0.7, -0.4], [1.1, 0.2, -0.9, 0.05, 1.7]], dtype=np.float32)
    reflect = ndimage.gaussian_filter(x, [TINY_SIGMA, 0.7], mode="reflect")
    constant = ndimage.gaussian_filter(x, [TINY_SIGMA, 0.7], mode="constant", cval=TINY_CVAL)
    save("gaussian_tiny_2x5.npy", np.stack([x, reflect, constant]).astype(np.float32))


if __name__ == "__main__":
    main()
