"""Face detection and alignment: the similarity fit, phone-style photos framed like training, odd inputs.

The photo tests build phone-style scenes from the shared CelebA subset at test time (testkit/phone_photos.py) and
skip when it is missing.

Two framing errors are measured, both as the largest corner distance over the training crop box's side:
- *consistency*: the square aligned in a phone photo, mapped back into the original face through the ground truth,
  against the square the same pipeline gives on the original aligned face. This is the pipeline's own error
  (detection under tilt, scale and JPEG, the warp) and must stay within 5 %.
- *absolute*: the same square against the CelebA crop box itself (what `frame_face` crops). CelebA's crops are only
  loosely aligned (eye distance varies by about 10 % between faces, eye-line angle by 2-3 degrees), so a face's
  landmarks cannot tell exactly where its crop box was: on the aligned training crops themselves the median is
  already about 6 %. The tests check that phone photos add little to that floor and that there is no bias.
"""

from __future__ import annotations

import math
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.core import detection
from service.core.alignment import (
    align,
    align_face,
    apply,
    crop_corners,
    frame_face,
    measure_template,
    similarity_transform,
)
from service.core.bundle import Preprocess
from service.core.detection import DetectorUnavailable, Face, FaceDetector
from service.core.face_models import FILES, MODELS_DIR
from service.core.imaging import to_rgb
from testkit.phone_photos import (
    IMAGE_DIR,
    PhonePhoto,
    enlarged,
    face_files,
    framing_error,
    no_face_photo,
    phone_photo,
    two_face_photo,
)

#: The bundled model's framing: a 140x140 box on CelebA's 178x218 images, resized to 64x64.
PREPROCESS = Preprocess(crop=(19 / 178, 43 / 218, 159 / 178, 183 / 218), size=64, resample="lanczos")
TEMPLATE_FACES = 40
PHONE_PHOTOS = 40
ALIGNED_CROPS = 30
#: Distinct ranges of the subset, so no test photo shares a face with the template.
TEMPLATE_START, PHONE_START, CROPS_START, OTHER_START = 0, 5000, 2000, 7000

needs_celeba = pytest.mark.skipif(not IMAGE_DIR.is_dir(), reason=f"the shared CelebA subset is not at {IMAGE_DIR}")


# ---- similarity_transform ---------------------------------------------------------------------------------------


def _similarity(angle_degrees: float, scale: float, translation: tuple[float, float]) -> np.ndarray:
    angle = math.radians(angle_degrees)
    matrix = np.eye(3)
    matrix[:2, :2] = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    matrix[:2, 2] = translation
    return matrix


@pytest.mark.parametrize(("angle", "scale", "translation"), [(23.0, 1.7, (5.0, -3.0)), (-170.0, 0.02, (400.0, 9.5))])
def test_similarity_transform_recovers_a_known_transform_exactly(
    angle: float, scale: float, translation: tuple[float, float]
) -> None:
    source = np.random.default_rng(0).uniform(0, 200, (5, 2))
    truth = _similarity(angle, scale, translation)
    recovered = similarity_transform(source, apply(truth, source))
    np.testing.assert_allclose(recovered, truth, atol=1e-9)


def test_similarity_transform_fits_noisy_points_without_reflecting() -> None:
    rng = np.random.default_rng(1)
    source = rng.uniform(0, 100, (5, 2))
    mirrored = source * np.array([-1.0, 1.0]) + rng.normal(0, 0.5, source.shape)
    matrix = similarity_transform(source, mirrored)
    assert np.linalg.det(matrix[:2, :2]) > 0  # a rotation and scale, never a mirror


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        (np.ones((5, 2)), np.random.default_rng(2).uniform(0, 9, (5, 2)), "coincide"),
        (np.random.default_rng(3).uniform(0, 9, (5, 2)), np.full((5, 2), 3.0), "coincide"),
        (np.zeros((1, 2)), np.zeros((1, 2)), "at least 2 points"),
        (np.zeros((5, 2)), np.zeros((4, 2)), r"\[N, 2\]"),
        (np.zeros((5, 3)), np.zeros((5, 3)), r"\[N, 2\]"),
        (np.array([[0.0, 0.0], [np.nan, 1.0]]), np.array([[0.0, 0.0], [1.0, 1.0]]), "finite"),
    ],
)
def test_similarity_transform_rejects_degenerate_input(source: np.ndarray, target: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        similarity_transform(source, target)


# ---- align (no detector) -----------------------------------------------------------------------------------------


def test_alignment_maps_the_template_onto_the_square_and_back() -> None:
    template = np.array([[0.36, 0.49], [0.64, 0.49], [0.5, 0.65], [0.39, 0.78], [0.62, 0.78]])
    truth = _similarity(12.0, 3.0, (150.0, 60.0))  # model square -> photo
    landmarks = apply(truth, template * PREPROCESS.size)
    photo = Image.new("RGB", (500, 400), (90, 120, 30))
    alignment = align(photo, landmarks, template, PREPROCESS)
    side = PREPROCESS.size
    square = np.array([[0.0, 0.0], [side, 0.0], [side, side], [0.0, side]])
    np.testing.assert_allclose(alignment.crop_box_in_photo(), apply(truth, square), atol=1e-9)
    np.testing.assert_allclose(apply(alignment.matrix, alignment.crop_box_in_photo()), square, atol=1e-9)
    assert alignment.pixels.shape == (side, side, 3) and alignment.pixels.dtype == np.uint8
    assert alignment.scale == pytest.approx(1 / 3.0)


def test_pixels_beyond_the_photo_repeat_its_edge() -> None:
    """A square reaching far outside a small photo takes the edge's colour, not black or grey."""
    photo = Image.new("RGB", (40, 30), (200, 40, 90))
    template = np.array([[0.36, 0.49], [0.64, 0.49], [0.5, 0.65], [0.39, 0.78], [0.62, 0.78]])
    landmarks = apply(_similarity(30.0, 4.0, (-100.0, 90.0)), template * PREPROCESS.size)  # mostly off the photo
    pixels = align_face(photo, landmarks, template, PREPROCESS)
    assert np.all(pixels == (200, 40, 90))


@needs_celeba
@pytest.mark.parametrize("enlarge", [1, 2, 9, 30])
def test_aligning_to_the_crop_box_itself_reproduces_frame_face(enlarge: int) -> None:
    """Landmarks placed exactly on the template inside the crop box: the warp must give `frame_face`'s pixels (a
    half-pixel slip, a blur from enlarging first, or aliasing from a 2,670x3,270 photo would all show)."""
    image = Image.open(face_files(1, CROPS_START)[0]).convert("RGB")
    if enlarge > 1:
        image = image.resize((image.width * enlarge, image.height * enlarge), Image.Resampling.LANCZOS)
    template = np.array([[0.36, 0.49], [0.64, 0.49], [0.5, 0.65], [0.39, 0.78], [0.62, 0.78]])
    box = crop_corners(PREPROCESS, image.width, image.height)
    landmarks = box[0] + template * (box[2] - box[0])
    difference = _mean_abs(align_face(image, landmarks, template, PREPROCESS), frame_face(image, PREPROCESS))
    assert difference <= 2.0


# ---- the detector on phone-style photos --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()  # its networks are files of the service package: always there


def test_a_damaged_network_file_makes_the_detector_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for file in MODELS_DIR.iterdir():
        if file.is_file():
            shutil.copy(file, tmp_path / file.name)
    damaged = tmp_path / FILES["mesh"]
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\0")
    monkeypatch.setattr(detection, "MODELS_DIR", tmp_path)
    with pytest.raises(DetectorUnavailable, match="sha256"):
        FaceDetector()
    (tmp_path / FILES["mesh"]).unlink()
    with pytest.raises(DetectorUnavailable, match="cannot be read"):
        FaceDetector()


@pytest.fixture(scope="module")
def template(detector: FaceDetector) -> np.ndarray:
    if not IMAGE_DIR.is_dir():
        pytest.skip(f"the shared CelebA subset is not at {IMAGE_DIR}")
    pairs = []
    for path in face_files(TEMPLATE_FACES, TEMPLATE_START):
        image = Image.open(path).convert("RGB")
        faces = detector.detect(image)
        if faces:
            pairs.append((image, faces[0]))
    assert len(pairs) >= TEMPLATE_FACES - 2, "the detector misses aligned training crops"
    return measure_template(pairs, PREPROCESS)


@dataclass(frozen=True)
class Framed:
    """One phone photo's outcome (errors are fractions of the crop box side; differences on a 0-255 scale)."""

    #: The largest face found is the one placed (CelebA crops sometimes show a real face in the crowd behind, smaller).
    found_it: bool
    consistency: float
    absolute: float
    absolute_original: float
    difference_to_original_aligned: float
    difference_to_frame_face: float
    difference_original_to_frame_face: float


def _inside(face: Face, corners: np.ndarray) -> bool:
    """Whether the face's landmarks are centred inside the bounding box of `corners` [4, 2]."""
    centre = face.landmarks.mean(axis=0)
    return bool(np.all(corners.min(axis=0) <= centre) and np.all(centre <= corners.max(axis=0)))


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def framed(detector: FaceDetector, template: np.ndarray) -> list[Framed]:
    """40 phone photos: half over smooth noise, half over another face image's blurred top strip."""
    results = []
    paths = face_files(PHONE_PHOTOS, PHONE_START)
    backgrounds = face_files(PHONE_PHOTOS, OTHER_START)
    for seed, (path, other) in enumerate(zip(paths, backgrounds, strict=True)):
        photo = phone_photo(path, seed, background=other if seed % 2 else None)
        faces = detector.detect(photo.image())
        original = Image.open(path).convert("RGB")
        reference = align(original, detector.detect(original)[0].landmarks, template, PREPROCESS)
        truth = photo.faces[0]
        if not faces or not _inside(faces[0], truth.crop_box(PREPROCESS)):
            results.append(Framed(False, math.inf, math.inf, 0.0, math.inf, math.inf, 0.0))
            continue
        aligned = align(photo.image(), faces[0].landmarks, template, PREPROCESS)
        side = float(np.linalg.norm(np.subtract(*crop_corners(PREPROCESS, *truth.face_size)[[1, 0]])))
        consistency = np.linalg.norm(truth.to_face(aligned.crop_box_in_photo()) - reference.crop_box_in_photo(), axis=1)
        expected = frame_face(original, PREPROCESS)
        results.append(
            Framed(
                found_it=True,
                consistency=float(consistency.max() / side),
                absolute=framing_error(truth, aligned.crop_box_in_photo(), PREPROCESS),
                absolute_original=float(
                    np.linalg.norm(
                        reference.crop_box_in_photo() - crop_corners(PREPROCESS, *truth.face_size), axis=1
                    ).max()
                    / side
                ),
                difference_to_original_aligned=_mean_abs(aligned.pixels, reference.pixels),
                difference_to_frame_face=_mean_abs(aligned.pixels, expected),
                difference_original_to_frame_face=_mean_abs(reference.pixels, expected),
            )
        )
    return results


@needs_celeba
def test_phone_photos_are_framed_like_the_same_face_aligned(framed: list[Framed]) -> None:
    consistency = np.array([f.consistency for f in framed])
    absolute = np.array([f.absolute for f in framed])
    floor = np.array([f.absolute_original for f in framed])
    print(
        f"\n{len(framed)} phone photos: consistency median {np.median(consistency):.3f}, within 5 % "
        f"{np.mean(consistency <= 0.05):.0%}; absolute median {np.median(absolute):.3f} "
        f"(the aligned originals' {np.median(floor):.3f}), within 5 % {np.mean(absolute <= 0.05):.0%}"
    )
    assert all(f.found_it for f in framed), "a face was missed, or a larger one found in the background"
    assert np.mean(consistency <= 0.05) >= 0.95, f"consistency errors: {np.sort(consistency)[-5:]}"
    assert np.median(absolute) <= np.median(floor) + 0.015
    assert np.percentile(absolute, 90) <= 0.15


@needs_celeba
def test_phone_photo_pixels_match_the_aligned_original(framed: list[Framed]) -> None:
    to_aligned = np.median([f.difference_to_original_aligned for f in framed])
    to_frame_face = np.median([f.difference_to_frame_face for f in framed])
    floor = np.median([f.difference_original_to_frame_face for f in framed])
    print(
        f"\nmedian mean-absolute difference (0-255): phone vs aligned original {to_aligned:.1f}, "
        f"phone vs frame_face {to_frame_face:.1f}, aligned original vs frame_face {floor:.1f}"
    )
    assert to_aligned <= 8.0  # JPEG, a second resampling and the small framing differences
    assert to_frame_face <= floor + 4.0


@needs_celeba
def test_aligned_training_crops_keep_frame_faces_framing(detector: FaceDetector, template: np.ndarray) -> None:
    """The original 89x109 crops and 2x copies: no bias against `frame_face`'s box, and the same square at both
    sizes; a single face's error is CelebA's own looseness (see the module docstring)."""
    offsets, absolute, between_sizes = [], [], []
    for path in face_files(ALIGNED_CROPS, CROPS_START):
        original = Image.open(path).convert("RGB")
        double = original.resize((original.width * 2, original.height * 2), Image.Resampling.LANCZOS)
        squares = []
        for image in (original, double):
            faces = detector.detect(image)
            box = crop_corners(PREPROCESS, image.width, image.height)
            assert faces and _inside(faces[0], box)
            side = box[1, 0] - box[0, 0]
            square = align(image, faces[0].landmarks, template, PREPROCESS).crop_box_in_photo()
            offsets.append((square - box) / side)
            absolute.append(np.linalg.norm(square - box, axis=1).max() / side)
            squares.append(square / side)  # in box sides, comparable between the two sizes
        between_sizes.append(np.linalg.norm(squares[1] - squares[0], axis=1).max())
    bias = np.abs(np.mean(offsets, axis=0)).max()
    print(
        f"\naligned crops: bias {bias:.3f}, absolute median {np.median(absolute):.3f}, "
        f"1x vs 2x median {np.median(between_sizes):.3f}, within 2 % {np.mean(np.array(between_sizes) <= 0.02):.0%}"
    )
    assert bias <= 0.02
    assert np.median(between_sizes) <= 0.015 and np.percentile(between_sizes, 90) <= 0.04
    assert np.median(absolute) <= 0.07


class _CountingDetector(FaceDetector):
    """A FaceDetector that counts its Face Mesh runs."""

    def __init__(self, mesh_settled: float) -> None:
        super().__init__(mesh_passes=2, mesh_settled=mesh_settled)
        self.mesh_runs = 0

    def _mesh_in(self, *args: Any) -> np.ndarray:
        self.mesh_runs += 1
        return super()._mesh_in(*args)


@needs_celeba
def test_face_mesh_runs_again_only_where_its_region_moved() -> None:
    """`mesh_settled` 0 runs every pass, a tolerance of a whole region one pass, the default some of each: the
    second pass is skipped on faces whose first pass hardly moved the region, and never more than `mesh_passes`."""
    images = [phone_photo(path, seed).image() for seed, path in enumerate(face_files(10, PHONE_START))]
    runs = {}
    for settled in (0.0, detection.MESH_SETTLED, 1.0):
        counting = _CountingDetector(settled)
        assert all(len(counting.detect(image)) == 1 for image in images)
        runs[settled] = counting.mesh_runs
    assert runs[0.0] == 20 and runs[1.0] == 10
    assert 10 < runs[detection.MESH_SETTLED] < 20, runs


@needs_celeba
def test_a_large_photo_is_framed_like_its_small_copy(detector: FaceDetector, template: np.ndarray) -> None:
    small = phone_photo(face_files(1, PHONE_START + PHONE_PHOTOS)[0], seed=99)
    large = enlarged(small, (4000, 3000))
    squares = []
    for photo in (small, large):
        image = photo.image()
        faces = detector.detect(image)
        assert len(faces) == 1
        square = align(image, faces[0].landmarks, template, PREPROCESS).crop_box_in_photo()
        squares.append(photo.faces[0].to_face(square))
    box = crop_corners(PREPROCESS, *small.faces[0].face_size)
    assert np.linalg.norm(squares[1] - squares[0], axis=1).max() / (box[1, 0] - box[0, 0]) <= 0.05


@needs_celeba
@pytest.mark.parametrize("seed", range(6))
def test_a_photo_without_a_face_gives_none(detector: FaceDetector, seed: int) -> None:
    assert detector.detect(no_face_photo(seed).image()) == []


#: The smaller face of pair 2 (painted, a microphone and a hand over the mouth) is one BlazeFace does not see at any
#: size or threshold tried (YuNet did): kept, strictly expected to fail, so a detector that finds it is noticed.
_HIDDEN_FACE = pytest.mark.xfail(strict=True, reason="BlazeFace misses the painted face behind a microphone")


@needs_celeba
@pytest.mark.parametrize("seed", [0, 1, pytest.param(2, marks=_HIDDEN_FACE), 3, 4, 5])
def test_two_faces_are_found_largest_first(detector: FaceDetector, seed: int) -> None:
    paths = face_files(2 * 6, OTHER_START + 100)[2 * seed : 2 * seed + 2]
    photo = two_face_photo((paths[0], paths[1]), seed)
    faces = detector.detect(photo.image())
    assert len(faces) == 2
    assert faces[0].area > faces[1].area
    for face, truth in zip(faces, photo.faces, strict=True):  # each in its own place, in ground truth's size order
        assert _inside(face, truth.crop_box(PREPROCESS))


# ---- odd inputs ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5000, 10), (10, 5000), (31, 31), (17, 900)])
def test_any_rgb_image_size_is_accepted(detector: FaceDetector, size: tuple[int, int]) -> None:
    pixels = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    faces = detector.detect(Image.fromarray(pixels))
    assert isinstance(faces, list)


def _photo(seed: int) -> PhonePhoto:
    return phone_photo(face_files(1, PHONE_START + seed)[0], seed)


@needs_celeba
@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "L->RGB", "RGBA->RGB"])
def test_other_image_modes_are_detected_like_rgb(detector: FaceDetector, mode: str) -> None:
    """The service hands over `to_rgb`'s output; other modes are converted by `detect` itself."""
    source, _, target = mode.partition("->")
    image = _photo(3).image().convert(source)
    faces = detector.detect(to_rgb(image) if target else image)
    assert len(faces) == 1


@needs_celeba
def test_a_detector_is_safe_to_share_between_threads(detector: FaceDetector) -> None:
    images = [_photo(seed).image() for seed in range(4)]
    expected = [[face.landmarks for face in detector.detect(image)] for image in images]
    results: dict[int, list[np.ndarray]] = {}

    def work(index: int) -> None:
        results[index] = [face.landmarks for face in detector.detect(images[index % 4])]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, landmarks in results.items():
        np.testing.assert_array_equal(np.stack(landmarks), np.stack(expected[index % 4]))
    assert len(results) == 8
