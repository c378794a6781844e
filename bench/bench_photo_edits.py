"""Photo edits per output mode: edit success at +2, identity, and /edit latency, on phone-style photos.

Each of `--photos` validation faces of the bundle's split (new to the VAE and to the judge) is placed in a 640x480
scene the way a phone holds it (testkit/phone_photos.py: enlarged 2-4x, tilted up to 20 degrees, JPEG), then framed
with align=auto and edited as photo /edit does (`service.core.compositing.compose`) in each of the four modes
(output=face|photo x detail=model|keep). The judge is training/classifier.py's blur-robust CNN at p >= 0.5:

- edit success at +2: for each attribute, the share of the photos labelled without it whose edited output is
  judged to have it;
- identity: on the unedited output (strength 0), the share of the judge's 40 verdicts, and of its Male verdict,
  that agree with its verdicts on the photo's own aligned face;
- latency: milliseconds per photo /edit (decode, detect, align, encode, decode twice, compose, PNG) for a 640x480
  photo and a 4000x3000 one (also answered as JPEG), per mode, medians interleaved over `--repeats`.

An output photo is judged by framing it again with the same alignment, so every mode is judged on the same square.

    python -m bench.bench_photo_edits                  # 200 photos, models/celeba-64
    python -m bench.bench_photo_edits --photos 40 --repeats 3   # smoke
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from PIL import Image

from bench import bench_quality as quality
from bench.common import DEFAULT_DATA, FIGURES_DIR, RESULTS_DIR, Table, fmt, machine, write_report
from service.core import operations
from service.core.alignment import RESAMPLE, SUPERSAMPLE, warp
from service.core.bundle import DEFAULT_MODEL
from service.core.compositing import Detail, Output, compose
from service.core.framing import Align, FaceFramer, Framed
from service.core.imaging import ImageFormat, PhotoDecoder, decode_upload, encode_image, make_grid, picture
from service.core.runtime import FaceModel
from testkit.phone_photos import enlarged, phone_photo
from training.card import EDIT_ATTRIBUTES, grid
from training.classifier import AttributeClassifier, default_out
from training.config import TrainConfig
from training.prepared import DEFAULT_CACHE, prepare_data

MODES = [(output, detail) for output in Output for detail in Detail]
STRENGTH = 2.0
SHOWN = 4
#: Uploads decoded as a server with the default settings decodes them.
PHOTO_DECODER = PhotoDecoder()


def label(mode: tuple[Output, Detail]) -> str:
    return f"output={mode[0]}, detail={mode[1]}"


def judged_square(result: np.ndarray, framed: Framed, output: Output, model: FaceModel) -> np.ndarray:
    """The square the judge sees: the output face, or the output photo framed again with the same alignment."""
    if output is Output.FACE:
        return result
    resample = RESAMPLE[model.bundle.preprocess.resample]
    return warp(Image.fromarray(result), framed.alignment.matrix, model.image_size, SUPERSAMPLE, resample)


def edit_once(
    model: FaceModel,
    framer: FaceFramer,
    jpeg: bytes,
    strengths: dict[str, float],
    mode: Any,
    image_format: ImageFormat = ImageFormat.PNG,
) -> bytes:
    """What photo /edit does for one request, without HTTP (the core's operation the router calls): the bytes it
    would answer with."""
    output, detail = mode
    result = operations.edit_photo(model, framer, PHOTO_DECODER, jpeg, strengths, output=output, detail=detail)
    return encode_image(picture(result.faces), image_format)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    model = FaceModel.load(args.model, threads=0, max_batch=16, max_strength=5)
    framer = FaceFramer(model.bundle.preprocess)
    judge = AttributeClassifier.load(args.classifier or default_out(model.image_size))
    upper_lip = quality.find_upper_lip_judge(args.upper_lip_judge, model.image_size)
    config = TrainConfig.from_manifest(model.bundle.manifest.training)
    data = prepare_data(config, args.data, DEFAULT_CACHE, skip_bad=False)
    assert data.labels is not None
    names = data.dataset.attribute_names
    male = judge.column("Male")

    agree = {mode: [] for mode in MODES}
    male_agree = {mode: [] for mode in MODES}
    success = {mode: {a: [] for a in args.attributes} for mode in MODES}
    shown: list[list[np.ndarray]] = []
    missed = 0
    for count, index in enumerate(data.val[: args.photos]):
        photo_bytes = phone_photo(data.dataset.image_dir / data.dataset.files[index], seed=count).jpeg
        photo = decode_upload(photo_bytes)
        faces = framer.detect(photo)
        if not faces:
            missed += 1
            continue
        framed = framer.frame(photo, Align.AUTO)
        z = model.encode_pixels(framed.pixels[np.newaxis]).code[0]
        before = model.decode(z[np.newaxis])
        real, _ = judge.predict(framed.pixels[np.newaxis])
        lacking = [a for a in args.attributes if data.labels[index, names.index(a)] < 0]
        edits = [("unedited", 0.0), *((a, STRENGTH) for a in lacking)]
        decoded = model.decode(np.stack([model.edit_codes(z[np.newaxis], {a: s})[0] if s else z for a, s in edits]))
        row = [framed.pixels]
        for mode in MODES:
            outputs = compose(photo, framed.alignment, before[0], decoded, *mode)
            squares = np.stack([judged_square(o, framed, mode[0], model) for o in outputs])
            verdicts = judge.predict(squares)[0] >= 0.5
            agree[mode].append(float(np.mean(verdicts[0] == (real[0] >= 0.5))))
            male_agree[mode].append(float(verdicts[0, male] == (real[0, male] >= 0.5)))
            for (name, _), verdict in zip(edits[1:], verdicts[1:], strict=True):
                success[mode][name].append(float(verdict[judge.column(name)]))
            if len(shown) < SHOWN and "Smiling" in lacking:
                row += [squares[0], squares[1 + lacking.index("Smiling")]]
        if len(row) > 1:
            shown.append(row)
        print(f"  {count + 1}/{args.photos} photos", end="\r", flush=True)

    print()
    timing = latency(model, framer, data, args)
    figure = strips(shown, args.figures)
    photo_grid(model, framer, data, args.attributes, args.figures)
    return {
        "machine": machine(),
        "bundle": str(args.model),
        "photos": args.photos,
        "no_face_found": missed,
        "modes": {
            label(mode): {
                "identity_all": float(np.mean(agree[mode])),
                "identity_male": float(np.mean(male_agree[mode])),
                "success": {a: (float(np.mean(v)) if v else None) for a, v in success[mode].items()},
                "faces_per_attribute": {a: len(v) for a, v in success[mode].items()},
            }
            for mode in MODES
        },
        "latency_ms": timing,
        "figure": str(figure),
        "learned_vs_vectors": learned_vs_vectors(model, framer, judge, upper_lip, data, args),
    }


def framed_photos(framer: FaceFramer, data: Any, photos: int) -> Iterator[tuple[int, int, Image.Image, Framed]]:
    """(count, index, photo, framed face) for the phone photos of the first `photos` validation faces in which a face
    is found, framed as photo /edit frames them (align=auto, the largest face)."""
    for count, index in enumerate(data.val[:photos]):
        photo = decode_upload(phone_photo(data.dataset.image_dir / data.dataset.files[index], seed=count).jpeg)
        if framer.detect(photo):
            yield count, index, photo, framer.frame(photo, Align.AUTO)


def photo_grid(model: FaceModel, framer: FaceFramer, data: Any, attributes: Sequence[str], figures: Path) -> Path:
    """The model card's photo grid: for SHOWN phone photos, the photo's aligned face, its unedited output and each
    attribute at +2 as photo /edit answers by default (output=face, detail=keep), by the learned editor and, in the
    row below, by the attribute vectors alone."""
    rows, labels = [], []
    for count, _, photo, framed in framed_photos(framer, data, 2 * SHOWN):
        z = model.encode_pixels(framed.pixels[np.newaxis]).code
        for variant, editing in (("learned", model), ("vectors", model.without_editor())):
            codes = np.concatenate([z, *(editing.edit_codes(z, {a: STRENGTH}) for a in attributes)])
            decoded = model.decode(codes)
            outputs = compose(photo, framed.alignment, decoded[0], decoded, Output.FACE, Detail.KEEP)
            rows.append(np.concatenate([framed.pixels[np.newaxis], outputs]))
            labels.append(f"photo {count + 1}, {variant}")
        if len(rows) == 2 * SHOWN:  # SHOWN photos, two rows each
            break
    figures.mkdir(parents=True, exist_ok=True)
    path = figures / "photo_edit_grid.png"
    grid(rows, labels).save(path)
    return path


def learned_vs_vectors(
    model: FaceModel,
    framer: FaceFramer,
    judge: AttributeClassifier,
    upper_lip: AttributeClassifier | None,
    data: Any,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The default photo edit (output=face, detail=keep) at +2 by the bundle's editor and by the attribute vectors
    alone, on the same phone photos: success, side effects (unrelated verdicts changed against the unedited output)
    and the same for a random move as long as each edit (`bench_quality.random_moves`), and their ratio; for the
    `upper_lip` judge's attribute (the moustache), its success on the women's photos too, and how often it saw one
    on their unedited output."""
    if model.editor is None:
        return {}
    names = data.dataset.attribute_names
    phi = quality.phi_correlations(data.labels[data.train])
    unrelated = {
        a: [
            judge.column(o)
            for j, o in enumerate(names)
            if o != a and abs(phi[names.index(a), j]) < quality.UNRELATED_PHI
        ]
        for a in args.attributes
    }
    editors = {"learned": model, "vectors": model.without_editor()}
    counts = {(v, a): np.zeros(3) for v in editors for a in args.attributes}  # success, side, random side
    faces = dict.fromkeys(args.attributes, 0)
    lip_name = upper_lip.attributes[0] if upper_lip is not None else None
    on_women = {v: np.zeros(2) for v in editors}  # the upper-lip judge: edited, unedited
    women = 0
    for count, index, photo, framed in framed_photos(framer, data, args.photos):
        z = model.encode_pixels(framed.pixels[np.newaxis]).code
        before = model.decode(z)[0]
        lacking = [a for a in args.attributes if data.labels[index, names.index(a)] < 0]
        for a in lacking:
            faces[a] += 1
        lip_judged = bool(upper_lip is not None and lip_name in lacking and data.labels[index, names.index("Male")] < 0)
        women += lip_judged
        for variant, editing in editors.items():
            codes = np.concatenate([editing.edit_codes(z, {a: STRENGTH}) for a in lacking])
            moved = z + quality.random_moves(model, np.linalg.norm(codes - z, axis=1), count)
            decoded = model.decode(np.concatenate([z, codes, moved]))
            outputs = compose(photo, framed.alignment, before, decoded, Output.FACE, Detail.KEEP)
            verdicts = judge.predict(outputs)[0] >= 0.5
            edited, random = verdicts[1 : 1 + len(lacking)], verdicts[1 + len(lacking) :]
            for i, a in enumerate(lacking):
                columns = unrelated[a]
                counts[(variant, a)] += [
                    edited[i, judge.column(a)],
                    np.mean(edited[i, columns] != verdicts[0, columns]),
                    np.mean(random[i, columns] != verdicts[0, columns]),
                ]
            if lip_judged:
                on_women[variant] += quality.seen_on(upper_lip, outputs[[1 + lacking.index(lip_name), 0]])
    rows = {}
    for (variant, a), (success, side, random_side) in counts.items():
        n = max(faces[a], 1)
        rows.setdefault(variant, {})[a] = {
            "faces": faces[a],
            "success": success / n,
            "side_effects": side / n,
            "random_side_effects": random_side / n,
            "side_ratio": quality.ratio(side, random_side),
        }
        if a == lip_name and women:
            edited_women, unedited_women = on_women[variant] / women
            rows[variant][a] |= {
                "women": women,
                "upper_lip_women": edited_women,
                "upper_lip_women_unedited": unedited_women,
            }
    return rows


def latency(model: FaceModel, framer: FaceFramer, data: Any, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median ms per photo /edit for a 640x480 and a 4000x3000 photo answered as PNG (the default), and the large
    one as JPEG (what the API docs advise for it), modes interleaved round by round."""
    small = phone_photo(data.dataset.image_dir / data.dataset.files[data.val[0]], seed=0)
    large = enlarged(small).jpeg
    cases = {
        "640x480": (small.jpeg, ImageFormat.PNG),
        "4000x3000": (large, ImageFormat.PNG),
        "4000x3000, format=jpeg": (large, ImageFormat.JPEG),
    }
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for case, (jpeg, image_format) in cases.items():
            for mode in MODES:
                started = time.perf_counter()
                edit_once(model, framer, jpeg, {"Smiling": STRENGTH}, mode, image_format)
                times.setdefault((case, label(mode)), []).append(1000 * (time.perf_counter() - started))
    return {case: {label(mode): float(np.median(times[(case, label(mode))])) for mode in MODES} for case in cases}


def strips(rows: Sequence[Sequence[np.ndarray]], figures: Path) -> Path:
    """The photo's aligned face, then per mode the unedited and the Smiling +2 output, one row per photo."""
    figures.mkdir(parents=True, exist_ok=True)
    path = figures / "photo_edit_modes.png"
    grid = make_grid(np.stack([face for row in rows for face in row]), columns=len(rows[0]))
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)
    return path


def comparison_table(compared: dict[str, Any], attributes: Sequence[str]) -> Table:
    def cell(row: dict[str, Any]) -> str:
        side, floor = fmt(row["side_effects"], 3), fmt(row["random_side_effects"], 3)
        shown = f"{fmt(row['success'], 2)} / {fmt(row['side_ratio'], 2)} ({side}, {floor})"
        if "upper_lip_women" in row:
            edited, unedited = fmt(row["upper_lip_women"], 2), fmt(row["upper_lip_women_unedited"], 2)
            shown += f"; on women, to the upper-lip judge {edited} (unedited {unedited})"
        return shown

    return Table(
        "Phone photos, output=face, detail=keep, +2: learned editor against the attribute vectors alone",
        ["attribute", *(f"{variant}: success / side ÷ random (side, random)" for variant in compared)],
        [[a, *(cell(compared[v][a]) for v in compared)] for a in attributes],
        "Side effects: unrelated verdicts (|phi| < 0.2) changed against the unedited output; random: the same "
        "for a random move as long as each face's edit, composited the same way. The upper-lip judge: "
        "training/classifier.py's UPPER_LIP, on the photos of women (no woman in CelebA has a moustache, so the "
        "whole-face judge calls one only on a face turned male).",
    )


def tables(report: dict[str, Any], attributes: Sequence[str]) -> list[Table]:
    modes = report["modes"]
    latency_ms = report["latency_ms"]
    compared = report.get("learned_vs_vectors") or {}
    extra = [comparison_table(compared, attributes)] if compared else []
    return [
        *extra,
        Table(
            f"Photo /edit per output mode ({report['photos']} phone-style validation photos, judge at p ≥ 0.5)",
            ["mode", "identity: 40 verdicts kept", "Male kept", *(f"{a} +2" for a in attributes)],
            [
                [
                    name,
                    f"{100 * m['identity_all']:.1f} %",
                    f"{100 * m['identity_male']:.0f} %",
                    *(fmt(m["success"][a], 2) for a in attributes),
                ]
                for name, m in modes.items()
            ],
            "Identity: verdicts on the unedited output that agree with those on the photo's own aligned face. Success: "
            "share of photos labelled without the attribute judged to have it after +2. An output photo is judged "
            f"framed again with the same alignment. No face found: {report['no_face_found']}.",
        ),
        Table(
            "Photo /edit latency, median ms (without HTTP)",
            ["mode", *latency_ms],
            [[label(mode), *(fmt(latency_ms[size][label(mode)], 0) for size in latency_ms)] for mode in MODES],
        ),
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path(DEFAULT_MODEL), help="bundle (default: %(default)s)")
    parser.add_argument("--classifier", type=Path, help="judge folder (default: runs/classifier-<image size>)")
    parser.add_argument(
        "--upper-lip-judge",
        type=Path,
        help="the moustache's judge, used where present (default: runs/classifier-<image size>-upper-lip)",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CelebA-layout folder (default: %(default)s)")
    parser.add_argument("--photos", type=int, default=200, help="validation faces to photograph (default: 200)")
    parser.add_argument("--attributes", nargs="+", default=list(EDIT_ATTRIBUTES))
    parser.add_argument("--repeats", type=int, default=7, help="latency rounds (default: 7)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "photo_edits.json")
    parser.add_argument("--figures", type=Path, default=FIGURES_DIR)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    report = measure(args)
    modes = report["modes"]
    best = max(modes, key=lambda m: modes[m]["identity_all"] + np.mean([v or 0 for v in modes[m]["success"].values()]))
    write_report(args.out, report, tables(report, args.attributes), f"best identity + success: {best}")


if __name__ == "__main__":
    main()
