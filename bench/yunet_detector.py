"""YuNet (libfacedetection, through the `yuface` package) with landmark refinement: the service's face detector
before MediaPipe's, kept here so `bench_detection` can still compare the two.

yuface (BSD-3-Clause, 1.1 MB, weights compiled in) has wheels for CPython 3.11 on Linux x86-64 only; install it
(`pip install 'yuface>=2023.5,<2024'`) to include this candidate. A coarse pass runs on a working copy whose longest
side is 640 px; for the largest faces, each refinement pass warps the photo so the current landmarks sit on an
upright template in a 320 px square and detects again there and on its mirror image (averaging the two cancels
YuNet's left-right bias). libfacedetection initialises its weights lazily in a global without a lock, so calls are
serialised.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from service.core.alignment import apply, similarity_transform, warp
from service.core.detection import Face

#: The longest side of the copy the coarse pass runs on: large photos are shrunk to `WORKING_SIDE` (a 12-megapixel
#: photo costs what a 640x480 one does), small ones enlarged to `MIN_WORKING_SIDE` so a face of a few dozen pixels
#: is still found; refinement then re-renders each face at a fixed size anyway.
WORKING_SIDE = 640
MIN_WORKING_SIDE = 320
#: The upright, frontal face refinement re-detects in: its five landmarks as fractions of a `REFINE_SIDE` square.
#: It is the CelebA template (about where YuNet finds the landmarks in the training crop box) with the crop box
#: shrunk to the middle 1 / `REFINE_ZOOM` of the square, so the face has some context around it. Measured on the
#: phone-style test photos, a crop box of about 256 px (320 / 1.25) gave the most consistent landmarks per
#: millisecond: smaller faces are less accurate, larger ones cost more and gain nothing.
_CELEBA_TEMPLATE = np.array([[0.364, 0.49], [0.636, 0.485], [0.501, 0.653], [0.391, 0.782], [0.622, 0.777]])
REFINE_ZOOM = 1.25
REFINE_SIDE = 320
CANONICAL_LANDMARKS = 0.5 + (_CELEBA_TEMPLATE - 0.5) / REFINE_ZOOM
REFINE_PASSES = 2
#: Faces beyond the largest few keep their coarse landmarks: a crowd photo should not cost a refinement per face.
MAX_REFINED = 4
#: libfacedetection finds faces from about 10 pixels up; a narrower working copy cannot hold one.
MIN_FACE_SIDE = 8
#: libfacedetection scores faces 0-100; below 0.5 (its own default) are mostly false positives.
MIN_SCORE = 0.5


class YuNetDetector:
    """YuNet face detection: a coarse pass on a working copy of the photo whose longest side is `working_side`,
    then, for the `max_refined` largest faces, landmark refinement.

    Refinement exists because YuNet's landmarks move with a face's tilt and size: on the phone-style test photos
    the worst of the five sat a median 4 % of the crop box away from where YuNet puts it on the same face upright,
    which the similarity fit amplified to a median 9 % error at the crop's corners (2 % with refinement). Each
    pass warps the photo so the current landmarks sit on `CANONICAL_LANDMARKS` in a `refine_side` square (upright,
    at a fixed scale, as the training crops are) and detects again there, and on its mirror image (averaging the
    two cancels YuNet's left-right bias); the landmarks found are mapped back to the photo. The box and score stay
    the coarse pass's. A template measured with `alignment.measure_template` belongs to these settings: measure it
    with the detector configuration that will use it.

    Thread safety: libfacedetection initialises its weights lazily in a global without a lock, and yuface's
    binding holds the GIL for the whole call, so concurrent calls would gain nothing anyway; calls into the library
    are serialised with a lock, which makes one instance safe to share between threads. Each library call (one, plus
    four per refined face) holds the GIL for its 5-30 ms: run `detect` in a worker thread, not on the event loop,
    and expect other Python threads to wait meanwhile.

    `threads` is the number of OpenMP threads libfacedetection may use (yuface bundles its own libgomp). The default
    of 1 is deliberate: with two threads on a busy 2-core machine OpenMP's spin-waiting made a call 8-17x slower
    (200-420 ms instead of 25 ms) while another process used the cores.
    """

    def __init__(
        self,
        min_score: float = MIN_SCORE,
        working_side: int = WORKING_SIDE,
        threads: int = 1,
        refine_passes: int = REFINE_PASSES,
        mirror: bool = True,
        max_refined: int = MAX_REFINED,
        refine_side: int = REFINE_SIDE,
    ) -> None:
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must lie in [0, 1], got {min_score}")
        if working_side < 32 or refine_side < 32:
            raise ValueError(
                f"working_side and refine_side must be at least 32 pixels, got {working_side}, {refine_side}"
            )
        if threads < 1 or refine_passes < 0 or max_refined < 0:
            raise ValueError("threads must be at least 1, refine_passes and max_refined at least 0")
        try:
            import yuface.yuface as binding
        except ImportError as exc:
            raise ImportError(f"YuNet needs the yuface package ({exc})") from exc
        self._detect = binding.detect
        self._set_threads = _openmp_thread_setter(Path(binding.__file__).parent)
        self.min_score = min_score
        self.working_side = working_side
        self.threads = threads
        self.refine_passes = refine_passes
        self.mirror = mirror
        self.max_refined = max_refined
        self.refine_side = refine_side
        self._lock = threading.Lock()
        self._run(np.zeros((WORKING_SIDE // 2, WORKING_SIDE // 2, 3), dtype=np.uint8))  # the lazy set-up, now

    def detect(self, image: Image.Image) -> list[Face]:
        """Faces in an image of any size and mode (converted to RGB first), largest box first; [] when none."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        faces = sorted(self._coarse(rgb), key=lambda face: face.area, reverse=True)
        return [self._refined(rgb, face) if i < self.max_refined else face for i, face in enumerate(faces)]

    def _coarse(self, rgb: Image.Image) -> list[Face]:
        width, height = rgb.size
        scale = min(max(max(width, height), MIN_WORKING_SIDE), self.working_side) / max(width, height)
        work_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        # Shrinking: BILINEAR is antialiased in Pillow's resize and reducing_gap first box-reduces by an integer
        # factor, which keeps a 4000x3000 photo to a few milliseconds. Enlarging: BILINEAR is enough for a detector.
        work = rgb.resize(work_size, Image.Resampling.BILINEAR, reducing_gap=3.0) if work_size != rgb.size else rgb
        rows = self._run(np.asarray(work))
        # Map back per axis: rounding the working size makes the two scales differ slightly.
        to_photo = np.array([width / work_size[0], height / work_size[1]])
        return [
            Face(
                box=tuple(float(v) for v in row[1:5] * np.tile(to_photo, 2)),
                landmarks=_landmarks(row) * to_photo,
                score=float(row[0]) / 100.0,
            )
            for row in rows
        ]

    def _refined(self, rgb: Image.Image, face: Face) -> Face:
        landmarks = face.landmarks
        for _ in range(self.refine_passes):
            try:
                to_square = similarity_transform(landmarks, CANONICAL_LANDMARKS * self.refine_side)
            except ValueError:  # landmarks that all coincide: nothing to refine from
                break
            found = self._canonical_landmarks(warp(rgb, to_square, self.refine_side, supersample=1))
            if found is None:  # the face was not found again where it should be: keep what we have
                break
            landmarks = apply(np.linalg.inv(to_square), found)
        return replace(face, landmarks=landmarks)

    def _canonical_landmarks(self, square: np.ndarray) -> np.ndarray | None:
        """The landmarks of the face at the canonical place in `square`, averaged with its mirror image's."""
        side = square.shape[1]
        expected = CANONICAL_LANDMARKS * side
        tolerance = 0.5 * float(np.linalg.norm(expected[1] - expected[0]))  # half the eye distance
        found = []
        for mirrored in (False, True) if self.mirror else (False,):
            rows = self._run(square[:, ::-1] if mirrored else square)
            if not len(rows):
                continue
            candidates = np.stack([_landmarks(row) for row in rows])
            if mirrored:  # back to the unmirrored square; the viewer's left eye there is the mirror's right one
                candidates[..., 0] = side - candidates[..., 0]
                candidates = candidates[:, _MIRROR_ORDER]
            distances = np.linalg.norm(candidates - expected, axis=2).mean(axis=1)
            if distances.min() <= tolerance:
                found.append(candidates[int(np.argmin(distances))])
        return np.mean(found, axis=0) if found else None

    def _run(self, rgb: np.ndarray) -> np.ndarray:
        """libfacedetection's rows scoring at least `min_score`: score (0-100), x, y, w, h, five (x, y) landmarks."""
        if min(rgb.shape[:2]) < MIN_FACE_SIDE:  # no face fits (a 5000x10 strip becomes 640x1)
            return np.zeros((0, 16), dtype=np.int16)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with self._lock:
            self._set_threads(self.threads)  # OpenMP settings are per calling thread
            rows = self._detect(bgr)
        return rows[rows[:, 0] >= self.min_score * 100]


#: Landmark indices of a mirrored face in `LANDMARKS` order: left and right swap, the nose stays.
_MIRROR_ORDER = [1, 0, 2, 4, 3]


def _landmarks(row: np.ndarray) -> np.ndarray:
    """[5, 2] continuous coordinates from a row's whole-pixel indices: a landmark at pixel i lies at i + 0.5."""
    return row[5:15].astype(np.float64).reshape(5, 2) + 0.5


def _openmp_thread_setter(package_dir: Path) -> Callable[[int], object]:
    """`omp_set_num_threads` of the libgomp copy yuface loads (dlopen of the same file returns the loaded library)."""
    candidates = sorted((package_dir.parent / "yuface.libs").glob("libgomp*.so*"))
    if not candidates:  # a build linked against the system's libgomp, or none: leave the thread count alone
        return lambda threads: None
    return ctypes.CDLL(str(candidates[0])).omp_set_num_threads
