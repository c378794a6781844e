"""Image bytes in and out: safe decoding of uploads, PNG/JPEG/WebP encoding, grids and strips.

Nothing here knows about HTTP or the model; errors are `InvalidImage` and `ImageTooLarge`.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
import re
import threading
from collections.abc import Iterator
from enum import StrEnum

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from service.core import memory

#: Larger images are refused before decoding (a 75 KB PNG can inflate to gigabytes): the default budget, which
#: the service sets with FACEVAE_MAX_PIXELS. 25 megapixels holds any phone photo.
MAX_PIXELS = 25_000_000
#: No setting goes beyond this; Pillow itself refuses twice it (its decompression-bomb guard).
PIXEL_CEILING = 40_000_000
#: Longest side of an upload, refused before decoding like `MAX_PIXELS`: the pixel budget alone would let through a
#: strip one pixel high and millions wide, which no photo is.
MAX_UPLOAD_SIDE = 16_384
#: Only these decoders run on uploads; Pillow's others (EPS via Ghostscript, ...) are not exposed.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
#: zlib level of the PNGs the service returns: 1 encodes a 640x480 photo in 0.20-0.21x the time of Pillow's default
#: 6 for 18 % more bytes, a 12-megapixel one in 0.42-0.44x for 39 % more (bench/bench_encoding.py); at 6 it was most
#: of a photo /edit's time with output=photo.
PNG_COMPRESS_LEVEL = 1
#: Most scans a JPEG may have. libjpeg makes one pass over every coefficient per scan, so a 200 KB progressive JPEG
#: of 16 megapixels with its last refinement scan repeated 2,000 times cost 33 s of CPU (draft decoding does not
#: help); libjpeg-turbo's own advice is to limit scans. Cameras write 1 (baseline), encoders' progressive modes 10
#: (libjpeg, jpegtran) or about as many (mozjpeg); at 16 a decode costs at most about 40 ms per megapixel here
#: (docs/benchmarks.md, "Hostile traffic").
MAX_JPEG_SCANS = 16
#: Photos of at least this many pixels are "large": their memory is handed back to the system once they are done.
TRIM_PIXELS = 4_000_000
GRID_PADDING = 2
GRID_BACKGROUND = 255

# Set explicitly rather than trusting defaults: Pillow refuses (not just warns about) images twice this size,
# and a truncated file is an error, not a half-grey face.
Image.MAX_IMAGE_PIXELS = PIXEL_CEILING
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Pillow opens 16-bit grayscale PNG and TIFF files in one of these modes.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_ROWS_PER_CHUNK = 256
#: Where `decode_upload` records the draft-mode scale and the photo's own size (upright) in the image's info.
_SCALE = "facevae_scale"
_SIZE = "facevae_size"
#: EXIF orientations that turn the photo by 90 degrees (width and height swap).
_TURNED = (5, 6, 7, 8)
_SOS = b"\xff\xda"
#: Pillow's decompression-bomb message, whose pixel count the 413 quotes.
_BOMB_SIZE = re.compile(r"\((\d+) pixels\)")
#: What Pillow's decoders raise on bad data, besides its own two error types.
_DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


class InvalidImage(Exception):
    """The bytes are not an image Pillow can fully decode."""


class ImageTooLarge(Exception):
    """The image's dimensions exceed `MAX_PIXELS` or `MAX_UPLOAD_SIDE`."""


class ImageFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"

    @classmethod
    def from_media_type(cls, media_type: str) -> ImageFormat:
        return cls(media_type.removeprefix("image/"))


def decode_upload(data: bytes, max_side: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an uploaded photo to an upright 8-bit RGB image, or raise `InvalidImage` / `ImageTooLarge`.

    With `max_side`, a JPEG is decoded by libjpeg at the smallest of its 1/2, 1/4 and 1/8 scales (Pillow's draft
    mode) whose longest side is still `max_side` or more: a 12-megapixel photo decodes 5x faster at 1000x750, which
    holds any face a 64x64 model can use. `photo_scale` of the result says how many photo pixels one of its pixels
    spans (1.0 when decoded whole), so coordinates can be given in the photo's own pixels.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:  # beyond twice PIXEL_CEILING: Pillow refuses it before we see it
        found = _BOMB_SIZE.search(str(exc))
        size = f"{found.group(1)} pixels" if found else f"more than {2 * PIXEL_CEILING} pixels"
        raise ImageTooLarge(
            f"image too large to decode: {size}, the limits are {max_pixels} pixels and {MAX_UPLOAD_SIDE} per side"
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage(f"not a recognised image (accepted formats: {', '.join(ACCEPTED_FORMATS)})") from exc
    except _DECODER_ERRORS as exc:
        raise InvalidImage(f"corrupt image header ({exc})") from exc
    _check_dimensions(image.width, image.height, max_pixels)
    if image.format == "JPEG":
        _check_scans(data)
    full_width = image.width
    full_size = image.size
    try:
        if image.getexif().get(0x0112) in _TURNED:
            full_size = full_size[::-1]
        if max_side is not None and image.format == "JPEG" and max(image.size) > max_side:
            ratio = max_side / max(image.size)
            image.draft("RGB", (math.ceil(image.width * ratio), math.ceil(image.height * ratio)))
        scale = full_width / image.width
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # in place: a copy of a 12-megapixel photo costs 50 ms
    except _DECODER_ERRORS as exc:
        raise InvalidImage(f"corrupt or truncated image ({exc})") from exc
    rgb = to_rgb(image)
    if rgb is not image:
        image.close()  # the decoded original's pixels go now, not when the request ends
    if max_side is not None and max(rgb.size) >= 2 * max_side:  # a large PNG, TIFF, ...: no draft mode there
        factor = max(rgb.size) // max_side
        width = rgb.width
        rgb = rgb.reduce(factor)  # a box filter: fast, and the full-size copy is freed at once
        scale *= width / rgb.width
    rgb.info[_SCALE] = scale
    rgb.info[_SIZE] = full_size
    return rgb


def _check_scans(data: bytes) -> None:
    """Refuse a JPEG with more than `MAX_JPEG_SCANS` scans (`ImageTooLarge`), counted before decoding.

    The marker segments before the first scan are walked by their lengths (an EXIF thumbnail's scans are inside one
    and not counted); after it, entropy-coded data cannot hold the SOS marker (0xFF is always stuffed), so every
    later occurrence is a scan."""
    position = 2  # after SOI
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xDA:
            break
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    else:
        return  # no scan found: Pillow's decoder says what is wrong
    scans = data.count(_SOS, position)
    if scans > MAX_JPEG_SCANS:
        raise ImageTooLarge(
            f"JPEG with {scans} scans; at most {MAX_JPEG_SCANS} are decoded (cameras write 1, progressive encoders "
            "about 10)"
        )


class PhotoDecoder:
    """`decode_upload` within a memory budget: at most `max_pixels` per image and `concurrent` photos at once.

    A decode of a 25-megapixel 16-bit PNG peaks at a few hundred megabytes, and a whole photo edited and encoded again
    (`output=photo`) at about 480 MB; eight at once needed gigabytes. So a photo holds one of `concurrent` slots while
    it is decoded, and, inside `hold()`, until its answer is encoded; requests beyond wait (in their worker thread).
    After a large photo the freed memory is handed back to the system (`memory.trim`).
    """

    def __init__(self, max_pixels: int = MAX_PIXELS, concurrent: int = 2) -> None:
        self.max_pixels = max_pixels
        self._slots = threading.BoundedSemaphore(concurrent)
        self._held = threading.local()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """One slot for everything this thread does inside (decoding, compositing, encoding): the whole-photo path."""
        if getattr(self._held, "depth", 0):
            self._held.depth += 1
            try:
                yield
            finally:
                self._held.depth -= 1
            return
        with self._slots:
            self._held.depth, self._held.pixels = 1, 0
            try:
                yield
            finally:
                self._held.depth = 0
                if self._held.pixels >= TRIM_PIXELS:
                    memory.trim()

    def decode(self, data: bytes, max_side: int | None = None) -> Image.Image:
        with self.hold():
            image = decode_upload(data, max_side, self.max_pixels)
            width, height = photo_size(image)
            self._held.pixels = max(self._held.pixels, width * height)
            return image


def photo_scale(image: Image.Image) -> float:
    """Photo pixels per pixel of an image from `decode_upload` (above 1 when it was decoded in draft mode)."""
    return float(image.info.get(_SCALE, 1.0))


def photo_size(image: Image.Image) -> tuple[int, int]:
    """The photo's own (upright) width and height for an image from `decode_upload`, however small it was decoded."""
    return image.info.get(_SIZE, image.size)


def _check_dimensions(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels or max(width, height) > MAX_UPLOAD_SIDE:
        raise ImageTooLarge(
            f"image too large to decode: {width}x{height} pixels, the limits are {max_pixels} pixels "
            f"and {MAX_UPLOAD_SIDE} per side"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: 16-bit is scaled (not clipped), transparency is flattened onto white; 32-bit integer
    values beyond 16 bits are refused (`InvalidImage`)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:  # mode "I" is 32-bit: a 16-bit file's values, or anything
            raise InvalidImage("32-bit integer pixels beyond 0-65535 have no white level; send an 8- or 16-bit image")
        image = Image.fromarray(_to_eight_bits(values))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        return _onto_white(image if image.mode == "RGBA" else image.convert("RGBA"))
    return image if image.mode == "RGB" else image.convert("RGB")


def _onto_white(rgba: Image.Image) -> Image.Image:
    """RGBA flattened onto white, a few hundred rows at a time: Pillow's alpha_composite needed three more full-size
    RGBA copies (300 MB at 25 megapixels)."""
    width, height = rgba.size
    result = Image.new("RGB", rgba.size)
    for top in range(0, height, _ROWS_PER_CHUNK):
        rows = np.asarray(rgba.crop((0, top, width, min(height, top + _ROWS_PER_CHUNK)))).astype(np.uint16)
        alpha = rows[..., 3:]
        flat = ((rows[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
        result.paste(Image.fromarray(flat), (0, top))
    return result


def _to_eight_bits(values: np.ndarray) -> np.ndarray:
    """v * 255 / 65535 rounded, in integers and a few hundred rows at a time: the temporaries of a 25-megapixel
    image stay at megabytes (float64 over the whole image needed 200 MB per copy)."""
    result = np.empty(values.shape, dtype=np.uint8)
    for start in range(0, len(values), _ROWS_PER_CHUNK):
        chunk = values[start : start + _ROWS_PER_CHUNK].astype(np.uint32)
        result[start : start + _ROWS_PER_CHUNK] = (chunk * 255 + 32767) // 65535
    return result


def encode_image(pixels: np.ndarray, image_format: ImageFormat) -> bytes:
    """Encode one uint8 [H, W, 3] array; same pixels give the same bytes."""
    buffer = io.BytesIO()
    image = Image.fromarray(pixels, mode="RGB")
    if image_format is ImageFormat.PNG:
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    elif image_format is ImageFormat.JPEG:
        image.save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="WEBP", quality=90)
    return buffer.getvalue()


def to_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def picture(faces: np.ndarray, columns: int | None = None) -> np.ndarray:
    """Faces uint8 [N, H, W, 3] as one picture: the face itself when there is one, else a grid of `columns`."""
    return faces[0] if len(faces) == 1 else make_grid(faces, columns)


def make_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """Tile uint8 [N, H, W, 3] images into one picture with a thin white border; one row is a strip.

    Without `columns` the grid is as square as possible.
    """
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    pad = GRID_PADDING
    grid = np.full(
        (rows * (height + pad) + pad, columns * (width + pad) + pad, channels), GRID_BACKGROUND, dtype=np.uint8
    )
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = pad + row * (height + pad), pad + column * (width + pad)
        grid[top : top + height, left : left + width] = image
    return grid
