"""Face detection: where the faces are in a photo, with five landmarks each, on the CPU.

Google MediaPipe's networks, run under onnxruntime from ONNX files committed in `service/core/face_models` (Apache-2.0;
see that package for where they come from): BlazeFace (full-range, or short-range for faces that fill the photo)
finds the faces, and Face Mesh places 468 landmarks on each, from which the five the service aligns with are taken.
Nothing is downloaded, no other runtime is needed, and it runs wherever onnxruntime does. It replaced YuNet
(libfacedetection, through `yuface`), which took five times as long and placed landmarks less consistently;
`bench/bench_detection.py` compares the two and MTCNN (docs/benchmarks.md, "Real photos").

Landmark order, used everywhere in the service (`service.core.bundle.LANDMARKS`): as the viewer sees the photo, left
eye, right eye, nose tip, left mouth corner, right mouth corner. "Left" is the viewer's left, i.e. the person's right.
Coordinates are continuous pixel coordinates of the photo: pixel (i, j) covers [i, i + 1) x [j, j + 1), so its
centre is (i + 0.5, j + 0.5), as in Pillow's `resize(box=...)` and `transform`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from service.core.alignment import apply
from service.core.bundle import sha256_file
from service.core.defaults import MESH_PASSES
from service.core.face_models import FILES, MANIFEST_FILE, MODELS_DIR
from service.core.sessions import open_session

if TYPE_CHECKING:
    import onnxruntime as ort

#: Recorded in a bundle's manifest with the landmark template it measured (`preprocess.landmark_detector`): a
#: template belongs to the detector that measured it, and a photo is aligned only with its own detector's template.
DETECTOR_NAME = "mediapipe-blazeface-full-facemesh"
#: Grey border around the photo in BlazeFace's square input, as a share of its longest side on each side: a face
#: cut by the photo's edge (as in tight crops) is found more often with room around it (by the full-range model on
#: 440 aligned CelebA crops: 7 missed instead of 10).
DETECTOR_MARGIN = 0.1
MESH_SIDE = 192
#: The largest box reduction before BlazeFace's bilinear resize (see `_detections`).
_MAX_REDUCE = 16
#: MediaPipe's region for Face Mesh: the face's box (detector's, or the landmarks' own once there are some) grown
#: 1.5x, square, rotated so the eyes are level.
ROI_SCALE = 1.5
#: Face Mesh runs at most `MESH_PASSES` times a face (`service.core.defaults`): the first on the detector's region,
#: each further one on the region of the last one's landmarks (MediaPipe's tracking loop). A further pass runs only
#: while the region still moves: its centre by more than this share of its side, its side by more than this share,
#: or its angle by more than this many radians (3.4 degrees). Below it another pass places the same landmarks within
#: the framing's own spread, so it would cost time for nothing (the tolerances measured: docs/benchmarks.md,
#: "Real photos: face detection and alignment", the settle tolerance).
MESH_SETTLED = 0.06
#: Faces beyond the largest few keep the detector's keypoints (see `_unrefined_landmarks`): a crowd photo should not
#: cost a Face Mesh pass per face.
MAX_REFINED = 4
#: MediaPipe's thresholds: detection score, and the overlap above which detections are merged (weighted NMS).
MIN_SCORE = 0.5
MERGE_IOU = 0.3
#: Face Mesh indices: the contours of the two eyes (person's right eye first, i.e. the viewer's left), the nose tip,
#: and the mouth corners (viewer's left first).
_EYE_CONTOURS = (
    [33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173],
    [263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398],
)
_NOSE_TIP = 1
_MOUTH_CORNERS = (61, 291)
#: Half the mouth's width in eye distances (the CelebA template's proportion): where faces beyond `MAX_REFINED` get
#: their mouth corners, either side of BlazeFace's mouth centre.
_MOUTH_CORNER_OFFSET = 0.42


class DetectorUnavailable(RuntimeError):
    """The detector's networks cannot be loaded (a file of service/core/face_models is missing or not what it should
    be)."""


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face, in the photo's continuous pixel coordinates (compared by identity: it holds an array)."""

    #: (left, top, width, height).
    box: tuple[float, float, float, float]
    #: float64 [5, 2] (x, y) in the order of `LANDMARKS`.
    landmarks: np.ndarray
    #: Detector confidence in [0, 1].
    score: float

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


@dataclass(frozen=True, eq=False)
class _Region:
    """A square of the photo that Face Mesh is run on: its centre, side (pixels), and the eye line it is rotated
    along (the square's x axis)."""

    centre: np.ndarray
    side: float
    eye_line: np.ndarray

    @classmethod
    def around(cls, mesh: np.ndarray, eye_line: np.ndarray) -> _Region:
        """MediaPipe's region for the next pass: the landmarks' box with the eyes level, grown `ROI_SCALE`x."""
        upright = mesh @ _rotation(eye_line)
        low, high = upright.min(axis=0), upright.max(axis=0)
        return cls((low + high) / 2 @ _rotation(eye_line).T, float((high - low).max()) * ROI_SCALE, eye_line)

    def to_square(self, side: int) -> np.ndarray:
        """3x3: photo pixels -> pixels of this region rendered `side` pixels a side, its x axis along the eye line
        (in closed form: the rotation into the region's frame, scaled, from its top-left corner)."""
        rotation = _rotation(self.eye_line)
        matrix = np.eye(3)
        matrix[:2, :2] = rotation.T * (side / self.side)
        matrix[:2, 2] = -matrix[:2, :2] @ (self.centre - rotation @ np.full(2, self.side / 2))
        return matrix

    def settled(self, previous: _Region, tolerance: float) -> bool:
        """Whether this region moved from `previous` by at most `tolerance` (see `MESH_SETTLED`): another pass would
        place the same landmarks."""
        along, across = self.eye_line @ _rotation(previous.eye_line)  # this eye line in the previous one's frame
        return (
            float(np.linalg.norm(self.centre - previous.centre)) <= tolerance * previous.side
            and abs(self.side - previous.side) <= tolerance * previous.side
            and abs(math.atan2(across, along)) <= tolerance
        )


@dataclass(frozen=True)
class _Detection:
    """A merged BlazeFace detection in photo pixels: box (x0, y0, x1, y1), score, six keypoints [6, 2] (viewer's
    left eye, right eye, nose tip, mouth centre, left and right ear tragion)."""

    box: np.ndarray
    score: float
    keypoints: np.ndarray

    @property
    def area(self) -> float:
        width, height = self.box[2:] - self.box[:2]
        return float(width * height)


class FaceDetector:
    """BlazeFace on the photo letterboxed into a square (see `_detections`), then Face Mesh on each of the
    `max_refined` largest faces, up to `mesh_passes` times (fewer once its region settles by `mesh_settled`; 0 runs
    every pass). The five landmarks are the means of Face Mesh's eye contours, its nose tip and its mouth corners.

    Face Mesh is what makes the framing consistent: it is a regression network run on an upright face at a fixed
    scale, so where it puts the landmarks hardly depends on how the face was tilted or how large it was in the
    photo (detectors' own keypoints move with both). Thread safety: onnxruntime sessions may be run from several
    threads at once and release the GIL while they compute, so one instance is shared by every request thread.
    """

    def __init__(
        self,
        min_score: float = MIN_SCORE,
        mesh_passes: int = MESH_PASSES,
        mesh_settled: float = MESH_SETTLED,
        max_refined: int = MAX_REFINED,
        threads: int = 1,
    ) -> None:
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must lie in [0, 1], got {min_score}")
        if mesh_passes < 1 or max_refined < 0 or threads < 1 or mesh_settled < 0:
            raise ValueError("mesh_passes and threads must be at least 1, max_refined and mesh_settled at least 0")
        self.min_score = min_score
        self.mesh_passes = mesh_passes
        self.mesh_settled = mesh_settled
        self.max_refined = max_refined
        full_range = _BlazeFace(_session(FILES["full_range"], threads), layers=((4, 1),))
        short_range = _BlazeFace(_session(FILES["short_range"], threads), layers=((8, 2), (16, 6)))
        #: (model, letterbox side) in the order they are tried (see `_detections`).
        self._search = ((full_range, 192), (full_range, 384), (short_range, 128))
        self._mesh = _session(FILES["mesh"], threads)

    def detect(self, image: Image.Image) -> list[Face]:
        """Faces in an image of any size and mode (converted to RGB first), largest box first; [] when none."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        faces = []
        for index, detection in enumerate(sorted(self._detections(rgb), key=lambda d: d.area, reverse=True)):
            if index < self.max_refined:
                landmarks = self._refined_landmarks(rgb, detection)
            else:
                landmarks = _unrefined_landmarks(detection.keypoints)
            box = detection.box
            faces.append(Face(tuple(float(v) for v in (*box[:2], *(box[2:] - box[:2]))), landmarks, detection.score))
        return faces

    def _detections(self, rgb: Image.Image) -> list[_Detection]:
        """BlazeFace's merged detections, mapped back from the letterboxed square into the photo, from the first of
        `SEARCH` that finds any: the full-range model at 192 px, then at 384 px, then the short-range model.

        At 192 px a face must be about a tenth of the photo's longest side; at 384 px a twentieth, for four times
        the cost (12 ms instead of 3), so it is only asked when the first pass found nothing. The short-range model
        (trained on faces close to the camera) finds faces that fill a tight crop, which the full-range one
        misses: on 470 aligned CelebA crops the passes together miss 1 (as YuNet did), full-range alone 7 (faces
        cut by the edge, a hand over the mouth). Run on every photo, it also finds faces that are not there in
        phone-style scenes (the largest face was the right one in 88 % of them, against 100 %)."""
        width, height = rgb.size
        for model, side in self._search:
            scale = side / (max(width, height) * (1 + 2 * DETECTOR_MARGIN))
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            # The resize box-reduces by the whole part of the ratio, at most 16x (Pillow's reduce slows down beyond:
            # 25x of a 12-megapixel photo took 25 ms, 16x 11.5), before the (antialiased) bilinear step does the
            # rest: a 640x480 photo is box-reduced 4x, 0.4 ms instead of 1.2 with a bilinear step of 1.5x (the
            # detector's input, not the model's: a box filter is good enough).
            gap = max(1.0, 1 / (scale * _MAX_REDUCE))
            small = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=gap) if size != rgb.size else rgb
            corner = ((side - size[0]) // 2, (side - size[1]) // 2)
            square = Image.new("RGB", (side, side), (128, 128, 128))  # about 0 in the networks' [-1, 1]
            square.paste(small, corner)
            boxes, scores, keypoints = model.run(square, self.min_score)
            if len(scores):
                offset = np.array(corner)  # input pixels -> photo pixels: (p - offset) / scale
                return [
                    _Detection((box.reshape(2, 2) - offset).reshape(4) / scale, score, (points - offset) / scale)
                    for box, score, points in _merged(boxes, scores, keypoints)
                ]
        return []

    def _refined_landmarks(self, rgb: Image.Image, detection: _Detection) -> np.ndarray:
        """The five landmarks from Face Mesh.

        Face Mesh's own face-presence output is not used: on aligned CelebA crops it rejected faces BlazeFace had
        found (a hand over the mouth, a profile; 4 of 470 missed with it, 1 without), while BlazeFace's score alone
        gave no face in 40 photos without one."""
        box = detection.box
        eye_line = detection.keypoints[1] - detection.keypoints[0]
        region = _Region((box[:2] + box[2:]) / 2, float((box[2:] - box[:2]).max()) * ROI_SCALE, eye_line)
        for _ in range(self.mesh_passes):
            mesh = self._mesh_in(rgb, region)
            eyes = np.stack([mesh[contour].mean(axis=0) for contour in _EYE_CONTOURS])
            region, previous = _Region.around(mesh, eyes[1] - eyes[0]), region
            if region.settled(previous, self.mesh_settled):
                break
        return np.concatenate([eyes, mesh[[_NOSE_TIP, *_MOUTH_CORNERS]]]).astype(np.float64)

    def _mesh_in(self, rgb: Image.Image, region: _Region) -> np.ndarray:
        """Face Mesh's 468 (x, y) landmarks in photo pixels for one region."""
        to_square = region.to_square(MESH_SIDE)
        pixels = _square_pixels(rgb, to_square, MESH_SIDE)
        landmarks, _ = self._mesh.run(None, {self._mesh.get_inputs()[0].name: pixels[None] / np.float32(255)})
        return apply(np.linalg.inv(to_square), landmarks.reshape(-1, 3)[:, :2].astype(np.float64))


def _square_pixels(rgb: Image.Image, to_square: np.ndarray, side: int) -> np.ndarray:
    """The `side`-pixel square that `to_square` (3x3, photo -> square pixels) maps the photo into, as MediaPipe
    renders a network's input: bilinear sampling, black beyond the photo's edges.

    Faster than `alignment.warp` (which renders the model input, where the photo's detail matters): a face more
    than twice the square's side is first box-reduced by a whole factor (`Image.reduce` of that region only), so
    bilinear sampling never skips pixels, and nothing else is resized."""
    from_square = np.linalg.inv(to_square)
    factor = int(math.sqrt(abs(np.linalg.det(from_square[:2, :2]))))  # photo pixels per square pixel, whole
    source = rgb
    if factor >= 2:
        corners = apply(from_square, np.array([[0.0, 0.0], [side, 0.0], [side, side], [0.0, side]]))
        low = np.clip(np.floor(corners.min(axis=0)) - factor, 0, rgb.size).astype(int)
        high = np.clip(np.ceil(corners.max(axis=0)) + factor, 0, rgb.size).astype(int)
        if np.all(high - low >= factor):
            source = rgb.reduce(factor, box=(*low, *high))
            from_square = (
                np.array([[1 / factor, 0, -low[0] / factor], [0, 1 / factor, -low[1] / factor], [0, 0, 1]])
                @ from_square
            )
    data = tuple(float(v) for v in from_square[:2].ravel())
    square = source.transform((side, side), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)
    return np.asarray(square, dtype=np.uint8)


def _session(name: str, threads: int) -> ort.InferenceSession:
    """One of service/core/face_models's networks, its sha256 checked against the folder's manifest."""
    path = MODELS_DIR / name
    try:
        expected = json.loads((MODELS_DIR / MANIFEST_FILE).read_text(encoding="utf-8"))["files"][name]
        actual = sha256_file(path)
    except (OSError, KeyError, ValueError) as exc:
        raise DetectorUnavailable(f"the face detector's network {name} cannot be read ({exc})") from exc
    if actual != expected:
        raise DetectorUnavailable(f"{path}: sha256 {actual} is not the manifest's {expected}")
    return open_session(path, threads=threads)


class _BlazeFace:
    """One BlazeFace model and its anchors: one centre per cell of each (stride, anchors per cell) layer, for any
    input side (MediaPipe's SSD anchors of fixed size: the regressors are offsets from these centres, in pixels)."""

    def __init__(self, session: ort.InferenceSession, layers: tuple[tuple[int, int], ...]) -> None:
        self.session = session
        self.layers = layers
        self.input_name = session.get_inputs()[0].name
        self._anchors: dict[int, np.ndarray] = {}

    def anchors(self, side: int) -> np.ndarray:
        """[N, 2] anchor centres in input pixels, row by row, as the network orders its outputs."""
        if side not in self._anchors:  # a benign race between threads: both compute the same array
            centres = []
            for stride, per_cell in self.layers:
                cells = (np.arange(side // stride) + 0.5) * stride
                x, y = np.meshgrid(cells, cells)
                centres.append(np.repeat(np.stack([x.ravel(), y.ravel()], axis=1), per_cell, axis=0))
            self._anchors[side] = np.concatenate(centres).astype(np.float32)
        return self._anchors[side]

    def run(self, square: Image.Image, min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The box (x0, y0, x1, y1), score and six keypoints [6, 2] of every anchor scoring at least `min_score`
        with a box of positive size (as MediaPipe keeps them), in input pixels; only those are decoded."""
        pixels = np.asarray(square, dtype=np.float32)[None] / 127.5 - 1.0
        regressors, logits = self.session.run(None, {self.input_name: pixels})
        scores = _sigmoid(logits[0, :, 0])
        kept = np.flatnonzero(scores >= min_score)
        anchors = self.anchors(square.width)[kept, None]
        values = regressors[0, kept]  # centre offset, size, then six keypoint offsets
        centre, half = values[:, 0:2] + anchors[:, 0], values[:, 2:4] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        positive = np.all(half > 0, axis=1)
        keypoints = values[:, 4:16].reshape(-1, 6, 2) + anchors
        return boxes[positive], scores[kept][positive], keypoints[positive]


def _merged(boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """MediaPipe's weighted non-maximum suppression: each group of boxes overlapping the best remaining one by more
    than `MERGE_IOU` becomes one detection, its box and keypoints the score-weighted means, its score the best."""
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    remaining = np.argsort(-scores)
    merged = []
    while len(remaining):
        best = boxes[remaining[0]]
        low = np.maximum(best[:2], boxes[remaining, :2])
        high = np.minimum(best[2:], boxes[remaining, 2:])
        overlap = np.prod(np.clip(high - low, 0.0, None), axis=1)
        iou = overlap / np.maximum(areas[remaining[0]] + areas[remaining] - overlap, 1e-12)
        group, remaining = remaining[iou > MERGE_IOU], remaining[iou <= MERGE_IOU]
        if not len(group):  # a degenerate box overlaps nothing, not even itself
            group, remaining = remaining[:1], remaining[1:]
        weights = scores[group] / scores[group].sum()
        merged.append(
            (
                (boxes[group] * weights[:, None]).sum(axis=0),
                float(scores[group].max()),
                (keypoints[group] * weights[:, None, None]).sum(axis=0),
            )
        )
    return merged


def _unrefined_landmarks(keypoints: np.ndarray) -> np.ndarray:
    """Five landmarks from BlazeFace's six keypoints alone: its eyes and nose, and the mouth corners placed either
    side of its mouth centre along the eye line."""
    eye_line = keypoints[1] - keypoints[0]
    mouth = keypoints[3]
    return np.stack(
        [
            keypoints[0],
            keypoints[1],
            keypoints[2],
            mouth - _MOUTH_CORNER_OFFSET * eye_line,
            mouth + _MOUTH_CORNER_OFFSET * eye_line,
        ]
    ).astype(np.float64)


def _rotation(direction: np.ndarray) -> np.ndarray:
    """The 2x2 matrix whose columns are `direction` and its perpendicular (pointing down the image), unit length:
    points @ it are the points in a frame where `direction` is the x axis."""
    length = float(np.linalg.norm(direction))
    unit = direction / length if length > 0 else np.array([1.0, 0.0])  # coincident eyes: upright
    return np.array([[unit[0], -unit[1]], [unit[1], unit[0]]])


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -80.0, 80.0)))
