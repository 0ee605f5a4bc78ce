"""Reference image preprocessing for the demo model (shared by the scripts here).

This is the Python statement of what an integrad.toml [input] section with
resize = "shorter-side-crop" means, used to make the fixtures in tests/data/:

 1. Decode the image and convert it to 8-bit RGB.
 2. Resize so that the shorter side is round(size / crop_fraction) pixels
    (224 / 0.875 = 256) with PIL's bilinear filter (PIL antialiases when it
    shrinks). The longer side becomes floor(long * 256 / short), the same
    truncation torchvision's Resize(int) uses; e.g. 451x300 -> 384x256.
    The result is rounded back to uint8 by PIL.
 3. Centre crop height x width: left = round((W - width) / 2),
    top = round((H - height) / 2) (Python round; exact for the samples here).
 4. value = (pixel * scale - mean[c]) / std[c], computed in float32 in that
    order, laid out as NCHW (C-order [3, H, W] per image).
"""

import tomllib

import numpy as np
from PIL import Image

IMAGENET_MEAN_STD = {
    "scale": 1.0 / 255.0,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}
TF_LITE_127_128 = {
    "scale": 1.0,
    "mean": [127.0, 127.0, 127.0],
    "std": [128.0, 128.0, 128.0],
}


def load_config(path):
    with open(path, "rb") as f:
        return tomllib.load(f)


def load_rgb(path_or_image):
    img = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    return img.convert("RGB")


def resize_shorter_side_crop(img, height=224, width=224, crop_fraction=0.875):
    """Steps 2-3 above; returns a uint8 PIL image of size (width, height)."""
    target = int(round(min(height, width) / crop_fraction))
    w, h = img.size
    if w <= h:
        new_w, new_h = target, int(h * target / w)
    else:
        new_w, new_h = int(w * target / h), target
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left = int(round((new_w - width) / 2.0))
    top = int(round((new_h - height) / 2.0))
    return img.crop((left, top, left + width, top + height))


def normalise(img, scale, mean, std, layout="NCHW"):
    """Step 4 above; returns float32 [3, H, W] (NCHW) or [H, W, 3] (NHWC)."""
    x = np.asarray(img, dtype=np.float32)  # [H, W, 3], values 0..255
    x = (x * np.float32(scale) - np.asarray(mean, dtype=np.float32)) / np.asarray(
        std, dtype=np.float32)
    if layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def preprocess(path_or_image, cfg_input):
    """Run steps 1-4 with the [input] table of an integrad.toml."""
    assert cfg_input["resize"] == "shorter-side-crop", cfg_input["resize"]
    img = resize_shorter_side_crop(load_rgb(path_or_image), cfg_input["height"],
                                   cfg_input["width"], cfg_input["crop_fraction"])
    return normalise(img, cfg_input["scale"], cfg_input["mean"], cfg_input["std"],
                     cfg_input.get("layout", "NCHW"))


def softmax(logits):
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
