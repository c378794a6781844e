"""How much of an edit's side effects is the attribute itself: edits with the unrelated attributes projected out.

`bench_quality` reports side effects at +2 (verdicts of attributes unrelated to the edited one that change, judged
at 0.5) next to a random move of the same length (the judge's floor). This asks whether the gap between the two is
removable. For every edited attribute, the directions of all attributes *unrelated* to it (|phi| < 0.2 on the
training labels, bench_quality's definition) are projected out of its vector, which is InterFaceGAN's conditional
manipulation with every unrelated attribute kept (what `/edit` does with a `keep` list), in two lengths:

- `projected`: strength 1 is the class-mean gap along the projected direction (what a bundle built this way would
  ship, and what `keep` gives);
- `full length`: the projected direction, moved as far as the shipped vector moves.

Each is judged exactly as bench_quality judges the shipped vectors (same faces, same judge, same floor).

Most of an edit's side effects fall on a few attributes that are unrelated by the labels' phi but go with the edited
one in photos (a rare attribute's phi stays small however strong the tie: glasses hide arched eyebrows on 98 % of
the photos that have them). So it also measures what a *real* change brings in the judge's eyes: per unrelated
attribute, how much more often the judge says it on validation photos labelled with the edited attribute than on
those without (within each sex, CelebA's strongest confounder). The mean of those shifts is about what a perfect
edit, one that turns a face into a real photo of the same person with the attribute, would show as side effects;
and the side effects are counted a second time on the *judge-independent* attributes alone (shift below 0.1).
Per edit it also names the unrelated attributes it changes most often beyond the random move, each beside its
real-photo shift: where the side effects fall, and whether a real change would bring them too.

It also measures the judge's own floor on the real photos, where nothing about the person changes: the same faces
(labelled without the attribute) mirrored, shifted by one pixel, saved as JPEG at quality 75, and reconstructed
from their refined codes, each against the photo itself, counted on the same unrelated attributes. A side effect
below these is noise the judge makes on any image of the same face.

    python -m bench.bench_entanglement --model models/celeba-64
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench import bench_quality as quality
from bench.common import DEFAULT_DATA, RESULTS_DIR, Table, fmt, machine, write_report
from service.core.bundle import DEFAULT_MODEL, AttributeVector
from training.config import EditConfig
from training.prepared import DEFAULT_CACHE, PreparedData, prepare_data

VARIANTS = ("learned", "shipped", "projected", "full length")
#: Changes to a real photo that keep the person and every attribute: what the judge's verdicts do under them.
SAME_FACE = ("mirrored", "shifted 1 px", "JPEG q75", "reconstructed")
JPEG_QUALITY = 75
#: An unrelated attribute whose judge verdicts differ by less than this between real photos with and without the
#: edited attribute is one the judge reads independently of it.
INDEPENDENT_SHIFT = 0.1
#: How many unrelated attributes the side-effect breakdown names per edit (those the edit changes most beyond the
#: random move).
EXCESS_SHOWN = 4
#: A sex is a stratum of the real-photo shift only with at least this many validation photos on either side.
STRATUM_FACES = 5


def same_face_variants(faces: np.ndarray, reconstructed: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 faces [N, H, W, 3] changed in ways that keep the person (`SAME_FACE`; their reconstructions are given),
    each uint8 [N, H, W, 3]."""

    def jpeg(face: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(face).save(buffer, "JPEG", quality=JPEG_QUALITY)
        return np.asarray(Image.open(buffer).convert("RGB"))

    return {
        "mirrored": np.ascontiguousarray(faces[:, :, ::-1]),
        "shifted 1 px": np.concatenate([faces[:, :, :1], faces[:, :, :-1]], axis=2),
        "JPEG q75": np.stack([jpeg(face) for face in faces]),
        "reconstructed": reconstructed,
    }


def judge_floor(subject: quality.Subject, judging: quality.EditJudging) -> list[dict[str, Any]]:
    """Per edited attribute: the share of unrelated verdicts that change between each photo labelled without it and
    the same photo changed in a way that keeps the person (`same_face_variants`)."""
    data = subject.data
    assert data.labels is not None
    rows = []
    for name in judging.attributes:
        column = data.dataset.attribute_names.index(name)
        chosen = np.flatnonzero(data.labels[data.val, column] == -1)[: judging.max_faces]
        photos = data.images[data.val[chosen]]
        verdicts, _ = quality.judge(judging.classifier, photos)
        unrelated = judging.unrelated[name]
        row: dict[str, Any] = {"attribute": name, "faces": len(chosen), "unrelated": len(unrelated)}
        reconstructed = quality.batched(subject.model.decode, subject.z_val[chosen])
        for variant, faces in same_face_variants(photos, reconstructed).items():
            changed, _ = quality.judge(judging.classifier, faces)
            row[variant] = float((changed != verdicts)[:, unrelated].mean())
        rows.append(row)
    return rows


def real_shifts(subject: quality.Subject, judging: quality.EditJudging) -> dict[str, np.ndarray]:
    """Per edited attribute, per classifier column: the share of validation photos labelled with the attribute that
    the judge gives that column's attribute, minus the share among photos labelled without it; within each sex
    (weighted by its photos) where both sides have STRATUM_FACES photos, else over all."""
    data = subject.data
    assert data.labels is not None
    labels = data.labels[data.val]
    verdicts, _ = quality.judge(judging.classifier, data.images[data.val])
    male = labels[:, data.dataset.attribute_names.index("Male")] > 0
    shifts = {}
    for name in judging.attributes:
        has = labels[:, data.dataset.attribute_names.index(name)] > 0
        strata = [s for s in (male, ~male) if min((has & s).sum(), (~has & s).sum()) >= STRATUM_FACES]
        if name == "Male" or not strata:
            strata = [np.ones_like(has)]
        parts = [verdicts[has & s].mean(axis=0) - verdicts[~has & s].mean(axis=0) for s in strata]
        shifts[name] = np.average(parts, axis=0, weights=[s.sum() for s in strata])
    return shifts


def independent_side_effects(
    rows: list[dict[str, Any]],
    independent: dict[str, list[int]],
    unrelated: dict[str, list[int]],
    shifts: dict[str, np.ndarray],
    columns: Sequence[str],
) -> None:
    """Add to every strength of `rows` (bench_quality.edits rows with per-column changes, which are dropped) the side
    effects, the random move's and their ratio over the attribute's judge-independent columns alone; and
    `largest_excess`: the `EXCESS_SHOWN` unrelated attributes (`columns` names the judge's) whose verdicts the edit
    changes most often beyond the random move, each with that excess and its real-photo shift (`real_shifts`)."""
    for row in rows:
        kept, unrelated_columns, shift = (
            independent[row["attribute"]],
            unrelated[row["attribute"]],
            shifts[row["attribute"]],
        )
        for effect in row["strengths"].values():
            changed, moved = np.asarray(effect.pop("changed")), np.asarray(effect.pop("random_changed"))
            side = float(changed[kept].mean()) if kept else None
            floor = float(moved[kept].mean()) if kept else None
            excess = changed - moved
            largest = sorted(unrelated_columns, key=lambda c: -excess[c])[:EXCESS_SHOWN]
            effect.update(
                independent_side_effects=side,
                independent_random=floor,
                independent_ratio=quality.ratio(side, floor),
                largest_excess={
                    columns[c]: {"excess": round(float(excess[c]), 3), "real_shift": round(float(shift[c]), 3)}
                    for c in largest
                },
            )


def projected_vectors(
    names: Sequence[str], labels: np.ndarray, z_train: np.ndarray, vectors: list[AttributeVector]
) -> dict[str, list[AttributeVector]]:
    """Per variant, the vectors with the directions of each attribute's unrelated attributes projected out.

    `labels` and `z_train` are the training split's labels [N, len(names)] (+-1) and codes [N, z_dim].
    """
    phi = quality.phi_correlations(labels)
    by_name = {v.name: np.asarray(v.vector, dtype=np.float64) for v in vectors}
    variants: dict[str, list[AttributeVector]] = {"shipped": vectors, "projected": [], "full length": []}
    for vector in vectors:
        i = names.index(vector.name)
        others = [
            by_name[n]
            for j, n in enumerate(names)
            if n in by_name and j != i and abs(phi[i, j]) < quality.UNRELATED_PHI
        ]
        direction = by_name[vector.name]
        if others:
            basis, _ = np.linalg.qr(np.stack(others, axis=1))
            direction = direction - basis @ (basis.T @ direction)
        norm = float(np.linalg.norm(direction))
        projections = z_train @ (direction / norm)
        positive = labels[:, i] > 0
        gap = float(projections[positive].mean() - projections[~positive].mean())
        for variant, step in (("projected", gap), ("full length", vector.step)):
            update = {"vector": direction.astype(np.float32).tolist(), "norm": norm, "step": step}
            variants[variant].append(vector.model_copy(update=update))
    return variants


def measure(args: argparse.Namespace) -> dict[str, Any]:
    limits = {"batch": quality.BATCH, "strength": max(quality.STRENGTHS)}

    def data_for(training: dict[str, Any]) -> PreparedData:
        return prepare_data(quality.data_config(training, None), args.data, args.cache_dir, skip_bad=False)

    subject = quality.open_bundle(args.model, args.model.name, data_for, limits)
    config = quality.data_config(subject.model.bundle.manifest.training, None)
    classifier = quality.load_classifier(args, config)
    quality.check_classifier(classifier, config, subject.label)
    vectors = list(subject.model.bundle.attributes.values())
    data = subject.data
    assert data.labels is not None
    judging = quality.EditJudging(
        classifier, args.attributes, args.edit_faces, quality.unrelated_columns(subject, classifier)
    )
    variants = projected_vectors(data.dataset.attribute_names, data.labels[data.train], subject.z_train, vectors)
    models = {name: quality.with_vectors(subject.model, found) for name, found in variants.items()}
    if subject.model.editor is not None:
        models = {"learned": subject.model, **models}
    shifts = real_shifts(subject, judging)
    independent = {
        name: [c for c in judging.unrelated[name] if abs(shifts[name][c]) < INDEPENDENT_SHIFT] for name in shifts
    }
    rows = []
    for variant, model in models.items():
        print(f"{variant} ...")
        section = quality.edits(subject, model, judging, per_column=True)
        independent_side_effects(section["rows"], independent, judging.unrelated, shifts, classifier.attributes)
        rows += [{"variant": variant, **row} for row in section["rows"]]
    print("the judge on the same faces ...")
    floor = judge_floor(subject, judging)
    for row in floor:
        unrelated, shift = judging.unrelated[row["attribute"]], shifts[row["attribute"]]
        row["real change"] = float(np.abs(shift[unrelated]).mean())
        row["independent"] = len(independent[row["attribute"]])
        row["largest shifts"] = {
            judging.classifier.attributes[c]: round(float(shift[c]), 3)
            for c in sorted(unrelated, key=lambda c: -abs(shift[c]))[:3]
        }
    return {"machine": machine(), "model": str(args.model), "rows": rows, "floor": floor}


def tables(report: dict[str, Any]) -> list[Table]:
    result = []
    for direction, strength in (("add", "+2"), ("remove", "-2")):
        rows = [
            [
                row["attribute"],
                row["variant"],
                quality.pct(row["strengths"][strength]["success"]),
                quality.pct(row["strengths"][strength]["success_where_it_occurs"]),
                fmt(row["strengths"][strength]["side_effects"], 3),
                fmt(row["strengths"][strength]["random_side_effects"], 3),
                fmt(row["strengths"][strength]["side_ratio"], 2),
                fmt(row["strengths"][strength]["person_perceptual"], 2),
                fmt(row["strengths"][strength]["person_inner_face"], 2),
                fmt(row["strengths"][strength]["person"], 2),
                fmt(row["strengths"][strength]["move_length"], 2),
                fmt(row["strengths"][strength]["independent_side_effects"], 3),
                fmt(row["strengths"][strength]["independent_ratio"], 2),
            ]
            for row in sorted(report["rows"], key=lambda r: (r["attribute"], VARIANTS.index(r["variant"])))
            if row["direction"] == direction
        ]
        result.append(
            Table(
                f"{report['model']}: {direction} at {strength}, unrelated attributes projected out",
                [
                    "attribute",
                    "edit",
                    "success",
                    "where it occurs",
                    "side effects",
                    "random move (floor)",
                    "ratio",
                    "person: perceptual",
                    "inner face",
                    "judge's features",
                    "length",
                    "judge-independent side effects",
                    "ratio",
                ],
                rows,
                "learned: the bundle's editor (what /edit serves); shipped: the bundle's vectors alone; where it "
                "occurs: success on the faces of a sex in which at least "
                f"{EditConfig().calibration_min_examples} training faces have the attribute (men for Mustache); "
                "projected: unrelated attributes' directions projected out, strength 1 = the class-mean gap along "
                "what is left; full length: the same direction, moved as far as the shipped vector. Floor: a random "
                "move as long as each face's edit; ratio: side effects over the floor; person: the perceptual distance "
                "from the unedited face (whole picture, inner face) and the distance in the judge's penultimate "
                "features, each over the random move's; length: the mean latent distance "
                "moved; judge-independent: the same over the unrelated attributes whose judge verdicts on real "
                f"photos differ by less than {INDEPENDENT_SHIFT} with and without the edited attribute.",
            )
        )
    result.append(
        Table(
            f"{report['model']}: where the learned edits' side effects fall at +2",
            ["attribute", "side effects - floor, summed", "unrelated attributes changed most beyond the random move"],
            [
                [
                    row["attribute"],
                    fmt((effect["side_effects"] - effect["random_side_effects"]) * row["unrelated"], 2),
                    ", ".join(
                        f"{name} {e['excess']:+.2f} (real {e['real_shift']:+.2f})"
                        for name, e in effect["largest_excess"].items()
                    ),
                ]
                for row in report["rows"]
                if row["variant"] == "learned" and row["direction"] == "add"
                for effect in [row["strengths"]["+2"]]
            ],
            "Per unrelated attribute, the share of faces whose verdict the edit changed minus the share the random "
            "move of the same length changed (summed over the unrelated attributes in the second column: the side "
            "effects' excess over the floor, in verdicts per face); in brackets how much more often the judge says "
            "that attribute on real validation photos with the edited attribute than without, within each sex "
            "(a real change brings about that much).",
        )
    )
    result.append(
        Table(
            f"{report['model']}: the judge on real photos that keep the person (unrelated verdicts changed)",
            ["attribute", "faces", "unrelated", *SAME_FACE, "a real change", "judge-independent", "largest shifts"],
            [
                [
                    row["attribute"],
                    row["faces"],
                    row["unrelated"],
                    *(fmt(row[v], 3) for v in SAME_FACE),
                    fmt(row["real change"], 3),
                    row["independent"],
                    ", ".join(f"{name} {shift:+.2f}" for name, shift in row["largest shifts"].items()),
                ]
                for row in report["floor"]
            ],
            "The photos labelled without the attribute (the faces its +2 edit is judged on), against themselves "
            f"mirrored, shifted one pixel right, saved as JPEG at quality {JPEG_QUALITY}, and decoded from their "
            "refined codes (what /encode gives); the attributes counted are the edit's unrelated ones. A real change: "
            "the mean over those of how much more often (absolute) the judge says each on real validation photos "
            "with the attribute than without, within each sex: about the side effects a perfect edit would show. "
            "Judge-independent: how many of them differ by less than "
            f"{INDEPENDENT_SHIFT}; largest shifts: the three that differ most.",
        )
    )
    return result


def headline(report: dict[str, Any]) -> str:
    def span(variant: str, key: str) -> str:
        values = [
            r["strengths"]["+2"][key] for r in report["rows"] if r["variant"] == variant and r["direction"] == "add"
        ]
        return f"{min(values):.2f}-{max(values):.2f}"

    variants = [v for v in VARIANTS if any(r["variant"] == v for r in report["rows"])]
    return (
        "+2 success / side effects ÷ random move: "
        + ", ".join(f"{v} " + " / ".join(span(v, k) for k in ("success", "side_ratio")) for v in variants)
        + "; the judge on the same real face, mirrored "
        + f"{min(r['mirrored'] for r in report['floor']):.3f}-{max(r['mirrored'] for r in report['floor']):.3f}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="bundle folder (default: %(default)s)")
    parser.add_argument("--classifier", type=Path, help="classifier folder (default: runs/classifier-<image size>)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CelebA-layout folder (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="decoded-face cache (as training's)")
    parser.add_argument("--attributes", nargs="+", default=list(quality.EDIT_ATTRIBUTES), help="attributes to edit")
    parser.add_argument("--edit-faces", type=int, default=300, help="most faces per attribute and direction")
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR / "entanglement.json", help="JSON (default: %(default)s)"
    )
    parser.set_defaults(train_classifier=False)  # bench_quality.load_classifier's switch: the judge must exist
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    report = measure(args)
    write_report(args.out, report, tables(report), headline(report))


if __name__ == "__main__":
    main()
