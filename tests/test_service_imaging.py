"""Upload decoding (modes, EXIF, limits, corrupt data), encoding and grids, without HTTP."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from service.core import imaging
from service.core.imaging import (
    GRID_PADDING,
    ImageFormat,
    ImageTooLarge,
    InvalidImage,
    decode_upload,
    encode_image,
    make_grid,
    photo_scale,
    to_rgb,
)
from tests.images import face_photo, image_bytes, png_claiming_size

EXIF_ORIENTATION = 0x0112


@pytest.mark.parametrize(
    ("mode", "image_format"),
    [("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("I;16", "PNG"), ("CMYK", "JPEG"), ("1", "BMP")],
)
def test_decode_upload_gives_8_bit_rgb_for_any_mode(mode: str, image_format: str) -> None:
    source = face_photo().convert("RGBA" if mode == "LA" else "RGB").convert(mode)
    decoded = decode_upload(image_bytes(source, image_format))
    assert decoded.mode == "RGB"
    assert decoded.size == source.size


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    half = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    assert np.asarray(to_rgb(half))[0, 0].tolist() == [128, 128, 128]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_is_flattened_onto_white(mode: str) -> None:
    clear = Image.new(mode, (4, 4), (0, 0, 0, 0) if mode == "RGBA" else (0, 0))
    assert np.asarray(to_rgb(clear)).min() == 255


def test_palette_transparency_is_flattened_onto_white() -> None:
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0] * 256)
    decoded = decode_upload(image_bytes(palette, "PNG", transparency=0))
    assert np.asarray(decoded).min() == 255


def test_exif_orientation_is_applied() -> None:
    upright = face_photo(40, 20)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes with orientation 6
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    decoded = decode_upload(image_bytes(stored, "PNG", exif=exif))
    assert decoded.size == upright.size
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(upright))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns between 1x and 2x
@pytest.mark.parametrize(
    ("width", "height"),
    [(100_000, 100_000), (7_000, 7_000), (20_000, 10)],
    ids=["bomb-over-twice-pillow-limit", "over-pixel-limit", "absurd-side"],
)
def test_huge_dimensions_are_refused_before_decoding(width: int, height: int) -> None:
    with pytest.raises(ImageTooLarge, match="image too large to decode"):
        decode_upload(png_claiming_size(width, height))


def test_truncated_jpeg_is_invalid() -> None:
    data = image_bytes(face_photo(), "JPEG")
    with pytest.raises(InvalidImage, match="truncated"):
        decode_upload(data[: len(data) // 2])


@pytest.mark.parametrize("data", [b"", b"hello, I am text", b"\x89PNG\r\n\x1a\n garbage"])
def test_non_images_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode_upload(data)


def test_formats_outside_the_allow_list_are_refused() -> None:
    """Pillow can read PPM, but uploads only go through the decoders the service lists."""
    with pytest.raises(InvalidImage, match="accepted formats"):
        decode_upload(image_bytes(face_photo(), "PPM"))


@pytest.mark.parametrize("image_format", list(ImageFormat))
def test_encode_image_round_trips_and_is_deterministic(image_format: ImageFormat) -> None:
    pixels = np.asarray(face_photo(16, 16))
    data = encode_image(pixels, image_format)
    assert data == encode_image(pixels, image_format)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == image_format.name
        assert image.size == (16, 16)
    if image_format is ImageFormat.PNG:
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)


def test_png_answers_are_compressed_for_speed() -> None:
    """Level 6 took 5x as long on a 640x480 photo (bench/bench_encoding.py): the zlib header says which was used."""
    data = encode_image(np.asarray(face_photo(64, 64)), ImageFormat.PNG)
    idat = data.index(b"IDAT") + 4
    assert data[idat : idat + 2] == b"\x78\x01"  # zlib's "fastest" level flag (level 6 writes 78 9c)


def test_make_grid_places_each_image_in_reading_order() -> None:
    images = np.stack([np.full((3, 4, 3), value, dtype=np.uint8) for value in (10, 20, 30, 40, 50)])
    grid = make_grid(images)  # 5 images -> 3 columns, 2 rows
    pad = GRID_PADDING
    assert grid.shape == (2 * (3 + pad) + pad, 3 * (4 + pad) + pad, 3)
    assert grid[pad, pad, 0] == 10
    assert grid[pad, pad + 2 * (4 + pad), 0] == 30
    assert grid[pad + 3 + pad, pad + 4 + pad, 0] == 50
    assert grid[-1, -1, 0] == 255  # the empty sixth cell stays background


def test_make_grid_with_all_columns_is_a_strip() -> None:
    strip = make_grid(np.zeros((5, 3, 4, 3), dtype=np.uint8), columns=5)
    assert strip.shape == (3 + 2 * GRID_PADDING, 5 * (4 + GRID_PADDING) + GRID_PADDING, 3)


@pytest.mark.parametrize(("size", "max_side", "decoded", "scale"), [((4000, 3000), 960, (1000, 750), 4.0),
                                                                 ((4000, 3000), 2000, (2000, 1500), 2.0),
                                                                 ((640, 480), 960, (640, 480), 1.0)])  # fmt: skip
def test_large_jpegs_decode_in_draft_mode_with_their_scale(
    size: tuple[int, int], max_side: int, decoded: tuple[int, int], scale: float
) -> None:
    data = image_bytes(face_photo(*size), "JPEG")
    image = decode_upload(data, max_side)
    assert (image.size, photo_scale(image)) == (decoded, scale)
    whole = decode_upload(data)
    assert (whole.size, photo_scale(whole)) == (size, 1.0)


def test_other_large_formats_are_reduced_by_a_whole_factor_with_their_scale() -> None:
    image = decode_upload(image_bytes(face_photo(1200, 900), "PNG"), 300)
    assert (image.size, photo_scale(image)) == ((300, 225), 4.0)
    # Under twice max_side nothing is gained: the image stays whole.
    image = decode_upload(image_bytes(face_photo(500, 400), "PNG"), 300)
    assert (image.size, photo_scale(image)) == ((500, 400), 1.0)


def test_thirty_two_bit_integer_pixels_beyond_sixteen_bits_are_invalid() -> None:
    values = (np.arange(32 * 32, dtype=np.int32).reshape(32, 32) * 100_000).astype(np.int32)
    with pytest.raises(InvalidImage, match="32-bit integer pixels beyond 0-65535"):
        decode_upload(image_bytes(Image.fromarray(values), "TIFF"))
    # The same mode with 16-bit values is a 16-bit image, scaled like one.
    small = decode_upload(image_bytes(Image.fromarray(np.full((4, 4), 65535, dtype=np.int32)), "TIFF"))
    assert np.asarray(small).min() == 255


def test_the_pixel_budget_is_a_setting_with_a_25_megapixel_default() -> None:
    claimed = png_claiming_size(6000, 5000)  # 30 megapixels: a header only, refused before any decoding
    with pytest.raises(ImageTooLarge, match="6000x5000 pixels, the limits are 25000000 pixels"):
        decode_upload(claimed)
    with pytest.raises(InvalidImage):  # within a 40-megapixel budget it is decoded, and found to be no image
        decode_upload(claimed, max_pixels=40_000_000)


def test_the_photo_decoder_bounds_concurrent_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def slow_decode(data: bytes, max_side: int | None, max_pixels: int) -> Image.Image:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return face_photo()

    monkeypatch.setattr(imaging, "decode_upload", slow_decode)
    decoder = imaging.PhotoDecoder(concurrent=2)
    threads = [threading.Thread(target=decoder.decode, args=(b"",)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 2
