"""Hostile inputs the tests and benchmarks share: cheap to send, once expensive to serve (docs/benchmarks.md,
"Hostile traffic")."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

SOS = b"\xff\xda"
EOI = b"\xff\xd9"


def progressive_jpeg(width: int, height: int, quality: int = 75, seed: int = 0) -> bytes:
    """A progressive JPEG of one flat colour: a few kilobytes, yet 16 megapixels to decode."""
    rng = np.random.default_rng(seed)
    small = np.full((2, 2, 3), rng.integers(0, 256, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, progressive=True)
    return buffer.getvalue()


def repeated_scan_jpeg(width: int = 4000, height: int = 4000, repeats: int = 2000) -> bytes:
    """A progressive JPEG whose last refinement scan is repeated `repeats` times: a few hundred kilobytes that cost
    libjpeg a full pass over the coefficients per scan."""
    data = progressive_jpeg(width, height)
    last = data.rindex(SOS)
    end = data.rindex(EOI)
    return data[:end] + data[last:end] * repeats + EOI


def blank_rgba_png(width: int = 5000, height: int = 5000) -> bytes:
    """An all-zero RGBA PNG (about 100 KB at 5000 x 5000) written row by row, without the pixels in memory."""
    raw_row = b"\x00" + bytes(4 * width)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(raw_row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
