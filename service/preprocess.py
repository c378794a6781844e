"""Face framing shared by training and serving, so a photo is cropped and resized identically in both."""

from __future__ import annotations

import numpy as np
from PIL import Image

from service.bundle import Preprocess

_RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
}


def frame_face(image: Image.Image, preprocess: Preprocess) -> np.ndarray:
    """Crop the manifest's box (fractions of width and height) and resize: uint8 array [size, size, 3].

    The box is passed to Pillow as sub-pixel floats, so a 89x109 and a 178x218 copy of one photo
    get the same framing.
    """
    rgb = image.convert("RGB")
    width, height = rgb.size
    left, top, right, bottom = preprocess.crop
    box = (left * width, top * height, right * width, bottom * height)
    size = (preprocess.size, preprocess.size)
    return np.asarray(rgb.resize(size, _RESAMPLE[preprocess.resample], box=box), dtype=np.uint8)
