"""Test photos made in memory: encoded bytes in any format, and PNG headers that claim absurd sizes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def face_photo(width: int = 89, height: int = 109) -> Image.Image:
    """A deterministic RGB picture with structure everywhere, so crops, rotations and resizes change the pixels."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x * y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


def image_bytes(image: Image.Image, image_format: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header says width x height: a decompression bomb's header without its payload."""
    data = bytearray(image_bytes(Image.new("L", (1, 1))))
    header_start = 8 + 4  # signature, then the IHDR chunk's length
    data[header_start + 4 : header_start + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[header_start : header_start + 4 + 13]))
    data[header_start + 17 : header_start + 21] = struct.pack(">I", crc)
    return bytes(data)
