"""Cutting a face out of a photo as training cut its faces: the bundle's crop box, and the similarity transform that
puts a photo's landmarks where the training crops have them.

An aligned photo (a CelebA crop, or `align=none`) is cropped to the bundle's box and resized (`frame_face`), by
training and serving alike, so both frame a face identically. Any other photo is framed like training by fitting
rotation, uniform scale and translation from its five detected landmarks to the landmark *template*: where the same
detector finds those landmarks inside the training crop box of the aligned training images, as fractions of the box
side (`align`). Pure numpy + Pillow; no detector is imported here (finding the faces is `service.core.detection`,
choosing one `service.core.framing`).

Coordinates are continuous pixel coordinates: pixel (i, j) covers [i, i + 1) x [j, j + 1), as in Pillow's
`resize(box=...)` and `transform`. The model square is the model input, `preprocess.size` pixels a side.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from service.core.bundle import Preprocess

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


#: The warp renders the model square with bicubic sampling at the photo's resolution, up to this multiple of its
#: size, then downscales with the preprocess's resample (Lanczos), the antialiased downscale that framed the
#: training faces (see `warp`). 2 is the least that keeps the model input as sharp as a finer warp, and changes it
#: by less than re-saving the photo as a JPEG does (docs/benchmarks.md, "The model-input warp at 2x instead of 4x").
SUPERSAMPLE = 2
#: Source pixels kept around the warped region, enough for the bicubic kernel (2 pixels each side) and rounding.
_MARGIN = 4
#: Relative spread below which points count as coincident.
_DEGENERATE = 1e-9


class HasLandmarks(Protocol):
    """What `measure_template` needs of a detection (`service.core.detection.Face` is one)."""

    @property
    def landmarks(self) -> np.ndarray: ...


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation taking `source` points to `target` ([N, 2] each).

    Umeyama's method with the reflection excluded (a mirrored face is not the same face). Returns the 3x3
    homogeneous matrix M with target ~ M @ [x, y, 1]. Raises ValueError for mismatched shapes, fewer than two
    points, non-finite values, or points that all coincide (no scale or rotation can be recovered).
    """
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape:
        raise ValueError(f"source and target must both be [N, 2] arrays, got {src.shape} and {dst.shape}")
    if len(src) < 2:
        raise ValueError(f"a similarity transform needs at least 2 points, got {len(src)}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise ValueError("points must be finite")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_centred, dst_centred = src - src_mean, dst - dst_mean
    src_var = float(np.mean(np.sum(src_centred**2, axis=1)))
    dst_var = float(np.mean(np.sum(dst_centred**2, axis=1)))
    reference = max(1.0, float(np.abs(src).max()), float(np.abs(dst).max())) ** 2
    if src_var <= _DEGENERATE * reference or dst_var <= _DEGENERATE * reference:
        raise ValueError("the source or target points all coincide: no rotation or scale can be recovered")
    covariance = dst_centred.T @ src_centred / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    signs = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) > 0 else -1.0])
    rotation = u @ np.diag(signs) @ vt
    scale = float(singular @ signs) / src_var
    if not scale > 0:  # only when the best proper fit collapses everything, e.g. points mirrored through a line
        raise ValueError("no proper similarity maps the source onto the target (the best fit has zero scale)")
    matrix = np.eye(3)
    matrix[:2, :2] = scale * rotation
    matrix[:2, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points [N, 2] through a 3x3 affine matrix."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:2, :2].T + matrix[:2, 2]


def crop_corners(preprocess: Preprocess, width: float, height: float) -> np.ndarray:
    """The training crop box of a `width` x `height` aligned image: [4, 2] top-left, top-right, bottom-right,
    bottom-left, in its pixels (what `frame_face` crops)."""
    left, top, right, bottom = crop_box(preprocess, width, height)
    return np.array([[left, top], [right, top], [right, bottom], [left, bottom]])


@dataclass(frozen=True, eq=False)
class Alignment:
    """A face framed like training, and the transform that did it, to map results back into the photo (an edited
    face is pasted back by warping it with `inverse()`). Compared by identity: it holds arrays."""

    #: uint8 [size, size, 3]: the model input, like `frame_face`'s.
    pixels: np.ndarray
    #: 3x3: photo pixel coordinates -> model-square pixel coordinates (0..size).
    matrix: np.ndarray

    @property
    def size(self) -> int:
        return self.pixels.shape[0]

    @property
    def scale(self) -> float:
        """Model-square pixels per photo pixel."""
        return math.sqrt(abs(np.linalg.det(self.matrix[:2, :2])))

    def inverse(self) -> np.ndarray:
        """3x3: model-square pixel coordinates -> photo pixel coordinates."""
        return np.linalg.inv(self.matrix)

    def to_photo(self, points: np.ndarray) -> np.ndarray:
        """Points [N, 2] of the model square in photo coordinates."""
        return apply(self.inverse(), points)

    def crop_box_in_photo(self) -> np.ndarray:
        """The model square's corners in the photo: [4, 2] top-left, top-right, bottom-right, bottom-left
        (a rotated square when the face was tilted; parts may lie outside the photo)."""
        side = float(self.size)
        return self.to_photo(np.array([[0.0, 0.0], [side, 0.0], [side, side], [0.0, side]]))


def align(
    image: Image.Image,
    landmarks: np.ndarray,
    template: np.ndarray,
    preprocess: Preprocess,
    supersample: int = SUPERSAMPLE,
) -> Alignment:
    """Warp `image` so `landmarks` ([5, 2], photo pixels) land on `template` ([5, 2], fractions of the model
    square's side): the model input framed as training framed its faces, and the transform used.

    Pixels the square takes from outside the photo repeat the photo's edge pixels (edge replication) rather than a
    flat fill: a face near the border then continues into plausible colours instead of a hard grey or black band,
    which the model never saw at the crop's edges in training and would spend latent capacity reproducing.
    """
    if supersample < 1:
        raise ValueError(f"supersample must be at least 1, got {supersample}")
    size = preprocess.size
    matrix = similarity_transform(landmarks, np.asarray(template, dtype=np.float64) * size)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    pixels = warp(rgb, matrix, size, supersample, RESAMPLE[preprocess.resample])
    return Alignment(pixels=pixels, matrix=matrix)


def align_face(image: Image.Image, landmarks: np.ndarray, template: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """`align`'s pixels alone: uint8 [size, size, 3], a drop-in for `frame_face` on photos with landmarks."""
    return align(image, landmarks, template, preprocess).pixels


def warp(
    rgb: Image.Image,
    matrix: np.ndarray,
    size: int,
    supersample: int = SUPERSAMPLE,
    resample: Image.Resampling = Image.Resampling.LANCZOS,
) -> np.ndarray:
    """The square [0, size]^2 of the frame `matrix` maps an RGB photo into (3x3, photo -> square pixels), as
    uint8 [size, size, 3].

    The square is rendered with bicubic sampling at the photo's own resolution there, but at least `size` and at
    most `supersample` x `size` pixels a side, then resized to `size` with `resample`. At the photo's resolution the
    bicubic step hardly filters, so the final resize does what `frame_face`'s does (an aligned 89x109 crop's
    70-pixel box is rendered at 70 pixels, then Lanczos-resized to 64), instead of blurring the face by first
    enlarging it. Bicubic sampling does not antialias either, so a photo much finer than `supersample` x `size`
    (a face 1,500 px wide in a 12-megapixel photo) is first cut to the square's neighbourhood and shrunk with
    Lanczos to that resolution. The source handed to Pillow therefore stays a few hundred pixels a side however
    large the photo or wherever the square lies, and edge replication is done by clamping indices into it.
    """
    photo_per_model = math.sqrt(abs(np.linalg.det(np.linalg.inv(matrix)[:2, :2])))
    side = min(size * supersample, max(size, round(size * photo_per_model)))
    to_square = np.diag([side / size, side / size, 1.0]) @ matrix
    from_square = np.linalg.inv(to_square)
    step = math.sqrt(abs(np.linalg.det(from_square[:2, :2])))  # photo pixels per supersampled pixel
    shrink = min(1.0, 1.0 / step)
    corners = apply(from_square, np.array([[0.0, 0.0], [side, 0.0], [side, side], [0.0, side]]))
    margin = _MARGIN / shrink  # in photo pixels
    low = corners.min(axis=0) - margin
    high = corners.max(axis=0) + margin

    # The part of the region inside the photo (at least one pixel, so a region beyond an edge repeats that edge),
    # shrunk so one source pixel is about one supersampled pixel.
    width, height = rgb.size
    x0 = min(max(math.floor(low[0]), 0), width - 1)
    y0 = min(max(math.floor(low[1]), 0), height - 1)
    x1 = min(max(math.ceil(high[0]), x0 + 1), width)
    y1 = min(max(math.ceil(high[1]), y0 + 1), height)
    part = rgb.crop((x0, y0, x1, y1))
    if shrink < 1.0:
        shrunk = (max(1, round((x1 - x0) * shrink)), max(1, round((y1 - y0) * shrink)))
        part = part.resize(shrunk, Image.Resampling.LANCZOS, reducing_gap=3.0)
    fx, fy = part.width / (x1 - x0), part.height / (y1 - y0)

    # The whole region in source pixels, edge-replicated where it leaves the photo.
    col0, row0 = math.floor((low[0] - x0) * fx), math.floor((low[1] - y0) * fy)
    col1, row1 = math.ceil((high[0] - x0) * fx), math.ceil((high[1] - y0) * fy)
    if col0 >= 0 and row0 >= 0 and col1 <= part.width and row1 <= part.height:  # inside: nothing to replicate
        source = part.crop((col0, row0, col1, row1))
    else:
        cols = np.clip(np.arange(col0, col1), 0, part.width - 1)
        rows = np.clip(np.arange(row0, row1), 0, part.height - 1)
        source = Image.fromarray(np.asarray(part)[rows[:, np.newaxis], cols[np.newaxis, :]])
    photo_to_source = np.array([[fx, 0.0, -x0 * fx - col0], [0.0, fy, -y0 * fy - row0], [0.0, 0.0, 1.0]])

    square_to_source = photo_to_source @ from_square
    data = tuple(float(v) for v in square_to_source[:2].ravel())
    warped = source.transform((side, side), Image.Transform.AFFINE, data, resample=Image.Resampling.BICUBIC)
    if side != size:
        warped = warped.resize((size, size), resample)
    return np.asarray(warped, dtype=np.uint8)


def measure_template(faces: Iterable[tuple[Image.Image, HasLandmarks]], preprocess: Preprocess) -> np.ndarray:
    """The landmark template: each training image's detected landmarks in fractions of its training crop box
    (0..1 of the box's width and height, i.e. of the model square's side), median over the faces, then moved so
    that aligning the training faces to it frames them, in the median, where their crop box is: [5, 2].

    `faces` pairs each aligned training image (uncropped, e.g. a CelebA 178x218 or 89x109 file) with the face the
    detector found in it. The median, not the mean, so the odd misdetection does not move the template. The move
    is needed because faces differ in shape: fitted to the median face, a face's landmarks give a square that is
    on average larger than its box (least squares shrinks the scale of points that scatter about the template;
    3-4 % of the box side with Face Mesh's landmarks). Aligning face i takes its square to be M_i^-1 of the box, so
    the template is moved by the median of the M_i^-1 (each of the four numbers of a similarity transform), which
    makes the median of the new M_i^-1 the identity: a least-squares similarity fit to a moved target is the moved
    fit, so each new M_i^-1 is the old one composed with the move's inverse.
    """
    fractions = []
    for image, face in faces:
        corners = crop_corners(preprocess, image.width, image.height)
        origin, extent = corners[0], corners[2] - corners[0]
        fractions.append((np.asarray(face.landmarks, dtype=np.float64) - origin) / extent)
    if not fractions:
        raise ValueError("measure_template needs at least one detected face")
    median = np.median(np.stack(fractions), axis=0)
    # Each alignment's inverse M_i^-1 (M_i: the face's landmarks -> template) as (a, b, tx, ty) of
    # [[a, -b, tx], [b, a, ty]].
    inverse = np.array(
        [np.linalg.inv(similarity_transform(points, median))[:2].ravel()[[0, 3, 2, 5]] for points in fractions]
    )
    a, b, tx, ty = np.median(inverse, axis=0)
    return apply(np.array([[a, -b, tx], [b, a, ty], [0.0, 0.0, 1.0]]), median)
