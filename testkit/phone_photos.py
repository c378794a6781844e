"""Phone-style test photos built from the CelebA subset: a face somewhere in a larger scene, tilted, JPEG-encoded.

Every photo is a deterministic function of its seed and source files, and comes with the ground truth: the affine
map from the original aligned face's pixel coordinates to the scene's, so where the training crop box of that face
lies in the scene is known exactly. Used by tests/test_service_detection.py and bench/bench_detection.py; the CelebA
images are read from the shared folder, never copied into the repository.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from service.core.alignment import apply, crop_corners
from service.core.bundle import Preprocess

#: The shared CelebA subset, `../shared/data/celeba_subset` relative to the repository root.
SUBSET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "celeba_subset"
IMAGE_DIR = SUBSET / "img_align_celeba"
SCENE_SIZE = (640, 480)
JPEG_QUALITY = 85
ENLARGE_RANGE = (2.0, 4.0)
MAX_TILT_DEGREES = 20.0


def face_files(count: int, start: int = 0) -> list[Path]:
    """`count` CelebA faces in file order from index `start` (000001.jpg is index 0)."""
    files = sorted(IMAGE_DIR.glob("*.jpg"))[start : start + count]
    if len(files) < count:
        raise FileNotFoundError(f"fewer than {start + count} faces in {IMAGE_DIR}")
    return files


@dataclass(frozen=True)
class PlacedFace:
    """Where one aligned face went: `face_to_scene` maps its pixel coordinates (continuous) to the scene's."""

    source: Path
    face_size: tuple[int, int]
    face_to_scene: np.ndarray
    enlarge: float
    tilt_degrees: float

    def crop_box(self, preprocess: Preprocess) -> np.ndarray:
        """The training crop box of this face in scene coordinates: [4, 2] TL, TR, BR, BL."""
        return apply(self.face_to_scene, crop_corners(preprocess, *self.face_size))

    def to_face(self, points: np.ndarray) -> np.ndarray:
        """Scene points [N, 2] in the original face's coordinates."""
        return apply(np.linalg.inv(self.face_to_scene), points)


@dataclass(frozen=True)
class PhonePhoto:
    """An encoded scene and the faces in it, largest first (none for a no-face scene)."""

    jpeg: bytes
    size: tuple[int, int]
    faces: tuple[PlacedFace, ...]

    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.jpeg)).convert("RGB")


def framing_error(face: PlacedFace, square_in_scene: np.ndarray, preprocess: Preprocess) -> float:
    """How far an aligned square (corners in scene coordinates, TL TR BR BL) is from the face's training crop box:
    the largest corner distance, measured in the original face's pixels, over the box side (0.05 = 5 %)."""
    truth = crop_corners(preprocess, *face.face_size)
    side = float(np.linalg.norm(truth[1] - truth[0]))
    return float(np.linalg.norm(face.to_face(square_in_scene) - truth, axis=1).max() / side)


def smooth_noise(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A coloured random image with structure at several scales and no faces: octaves of upsampled noise."""
    width, height = size
    total = np.zeros((height, width, 3))
    for cells, weight in ((3, 1.0), (8, 0.5), (24, 0.25), (64, 0.12)):
        grid = rng.uniform(0, 255, (max(2, cells * height // width), cells, 3)).astype(np.uint8)
        total += weight * np.asarray(Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
    total /= 1.87
    tint = rng.uniform(0.6, 1.2, 3)
    return Image.fromarray(np.clip(total * tint, 0, 255).astype(np.uint8))


def landscape(rng: np.random.Generator, size: tuple[int, int] = SCENE_SIZE) -> Image.Image:
    """Sky above a textured ground: a photo without a face."""
    width, height = size
    horizon = int(height * rng.uniform(0.35, 0.65))
    y = np.linspace(0.0, 1.0, height)[:, np.newaxis, np.newaxis]
    sky = (1 - y) * np.array([90, 140, 220]) + y * np.array([200, 220, 240])
    pixels = np.broadcast_to(sky, (height, width, 3)).copy()
    ground = np.asarray(smooth_noise(rng, (width, height - horizon)), dtype=np.float64)
    pixels[horizon:] = ground * np.array([0.5, 0.8, 0.35]) + 20
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))


def _background(rng: np.random.Generator, size: tuple[int, int], other: Path | None) -> Image.Image:
    """Smooth noise, or the top strip of another CelebA image (hair, wall, sky) enlarged and blurred."""
    if other is None:
        return smooth_noise(rng, size)
    with Image.open(other) as source:
        strip = source.convert("RGB").crop((0, 0, source.width, source.height // 5))
    return strip.resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(6))


def _placement(
    face_size: tuple[int, int], enlarge: float, tilt_degrees: float, centre: tuple[float, float]
) -> np.ndarray:
    """3x3: face pixels -> scene pixels, enlarging by `enlarge` and rotating by `tilt_degrees` about the face's
    centre, which lands on `centre`."""
    angle = math.radians(tilt_degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    rotate_scale = enlarge * np.array([[cos, -sin], [sin, cos]])
    matrix = np.eye(3)
    matrix[:2, :2] = rotate_scale
    matrix[:2, 2] = np.asarray(centre) - rotate_scale @ (np.asarray(face_size, dtype=np.float64) / 2)
    return matrix


def _half_extent(face_size: tuple[int, int], enlarge: float, tilt_degrees: float) -> np.ndarray:
    """Half the width and height of the axis-aligned box around the placed face."""
    angle = math.radians(tilt_degrees)
    c, s = abs(math.cos(angle)), abs(math.sin(angle))
    w, h = face_size
    return enlarge * np.array([w * c + h * s, w * s + h * c]) / 2


def _fitting_enlarge(face_size: tuple[int, int], enlarge: float, tilt_degrees: float, room: Sequence[float]) -> float:
    """`enlarge`, reduced if needed so the tilted face fits in `room` (width, height)."""
    unit = _half_extent(face_size, 1.0, tilt_degrees) * 2
    return min(enlarge, float(room[0] / unit[0]), float(room[1] / unit[1]))


def _paste(scene: Image.Image, face: Image.Image, matrix: np.ndarray) -> None:
    """Draw `face` into `scene` through `matrix` (face -> scene), with antialiased edges."""
    data = tuple(np.linalg.inv(matrix)[:2].ravel())
    warped = face.transform(scene.size, Image.Transform.AFFINE, data, resample=Image.Resampling.BICUBIC)
    mask = Image.new("L", face.size, 255).transform(
        scene.size, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR
    )
    scene.paste(warped, (0, 0), mask)


def _encode(scene: Image.Image, faces: Sequence[PlacedFace]) -> PhonePhoto:
    buffer = io.BytesIO()
    scene.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    ordered = sorted(faces, key=lambda face: face.enlarge * face.face_size[0], reverse=True)
    return PhonePhoto(jpeg=buffer.getvalue(), size=scene.size, faces=tuple(ordered))


def phone_photo(
    face: Path, seed: int, background: Path | None = None, scene_size: tuple[int, int] = SCENE_SIZE
) -> PhonePhoto:
    """One face enlarged 2-4x (less when a tilted 4x face would not fit), tilted up to +-20 degrees, fully inside
    the scene at a random place; over smooth noise, or over `background`'s top strip blurred."""
    rng = np.random.default_rng(seed)
    scene = _background(rng, scene_size, background)
    with Image.open(face) as source:
        pixels = source.convert("RGB")
    tilt = float(rng.uniform(-MAX_TILT_DEGREES, MAX_TILT_DEGREES))
    enlarge = _fitting_enlarge(pixels.size, float(rng.uniform(*ENLARGE_RANGE)), tilt, scene_size)
    half = _half_extent(pixels.size, enlarge, tilt)
    centre = (
        float(rng.uniform(half[0], scene_size[0] - half[0])),
        float(rng.uniform(half[1], scene_size[1] - half[1])),
    )
    matrix = _placement(pixels.size, enlarge, tilt, centre)
    _paste(scene, pixels, matrix)
    return _encode(scene, [PlacedFace(face, pixels.size, matrix, enlarge, tilt)])


def two_face_photo(faces: tuple[Path, Path], seed: int, scene_size: tuple[int, int] = SCENE_SIZE) -> PhonePhoto:
    """Two faces side by side, in random halves of the scene, the second at 55-75 % of the first's size."""
    rng = np.random.default_rng(seed)
    scene = smooth_noise(rng, scene_size)
    half_room = (scene_size[0] / 2, scene_size[1])
    big_enlarge = float(rng.uniform(2.0, 2.6))
    sizes = (big_enlarge, big_enlarge * float(rng.uniform(0.55, 0.75)))
    big_on_left = bool(rng.integers(2))
    placed = []
    for index, (path, enlarge) in enumerate(zip(faces, sizes, strict=True)):
        with Image.open(path) as source:
            pixels = source.convert("RGB")
        tilt = float(rng.uniform(-MAX_TILT_DEGREES / 2, MAX_TILT_DEGREES / 2))
        enlarge = _fitting_enlarge(pixels.size, enlarge, tilt, half_room)
        half = _half_extent(pixels.size, enlarge, tilt)
        left = 0.0 if (index == 0) == big_on_left else half_room[0]
        centre = (
            left + float(rng.uniform(half[0], half_room[0] - half[0])),
            float(rng.uniform(half[1], half_room[1] - half[1])),
        )
        matrix = _placement(pixels.size, enlarge, tilt, centre)
        _paste(scene, pixels, matrix)
        placed.append(PlacedFace(path, pixels.size, matrix, enlarge, tilt))
    return _encode(scene, placed)


def no_face_photo(seed: int, scene_size: tuple[int, int] = SCENE_SIZE) -> PhonePhoto:
    """A landscape-like scene (even seeds) or a smooth gradient with faint noise (odd seeds), without a face."""
    rng = np.random.default_rng(seed)
    if seed % 2 == 0:
        return _encode(landscape(rng, scene_size), [])
    width, height = scene_size
    x = np.linspace(0.0, 1.0, width)[np.newaxis, :, np.newaxis]
    y = np.linspace(0.0, 1.0, height)[:, np.newaxis, np.newaxis]
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    gradient = start + (end - start) * (0.6 * x + 0.4 * y) + rng.normal(0, 3, (height, width, 3))
    return _encode(Image.fromarray(np.clip(gradient, 0, 255).astype(np.uint8)), [])


def enlarged(photo: PhonePhoto, size: tuple[int, int] = (4000, 3000), quality: int = JPEG_QUALITY) -> PhonePhoto:
    """The same scene at `size` (a 12-megapixel phone photo from a 640x480 one), re-encoded, ground truth scaled."""
    scene = photo.image().resize(size, Image.Resampling.BICUBIC)
    scale = np.diag([size[0] / photo.size[0], size[1] / photo.size[1], 1.0])
    faces = [
        PlacedFace(f.source, f.face_size, scale @ f.face_to_scene, f.enlarge * size[0] / photo.size[0], f.tilt_degrees)
        for f in photo.faces
    ]
    buffer = io.BytesIO()
    scene.save(buffer, format="JPEG", quality=quality)
    return PhonePhoto(jpeg=buffer.getvalue(), size=size, faces=tuple(faces))
