"""Face framing shared by training and serving, so a photo is cropped and resized identically in both."""

from __future__ import annotations

import numpy as np
from PIL import Image

from service.bundle import Preprocess

RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
}


def crop_box(preprocess: Preprocess, width: float, height: float) -> tuple[float, float, float, float]:
    """The training crop of a `width` x `height` image: (left, top, right, bottom) in its pixels.

    The box's centre is given as fractions of width and height; its side is the shorter of its two sides in
    pixels, so the crop is square on any aspect ratio (on CelebA's 178:218 both sides are already equal) and a
    4000x3000 photo is cropped, not squashed.
    """
    left, top, right, bottom = preprocess.crop
    half = min((right - left) * width, (bottom - top) * height) / 2
    centre_x, centre_y = (left + right) / 2 * width, (top + bottom) / 2 * height
    return (centre_x - half, centre_y - half, centre_x + half, centre_y + half)


def frame_face(image: Image.Image, preprocess: Preprocess) -> np.ndarray:
    """Crop `crop_box` and resize: uint8 array [size, size, 3].

    The box is passed to Pillow as sub-pixel floats, so a 89x109 and a 178x218 copy of one photo get the same
    framing.
    """
    rgb = image.convert("RGB")
    size = (preprocess.size, preprocess.size)
    box = crop_box(preprocess, *rgb.size)
    return np.asarray(rgb.resize(size, RESAMPLE[preprocess.resample], box=box), dtype=np.uint8)
