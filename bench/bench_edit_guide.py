"""Edits seen by two classifiers, and per-face gradient directions next to them.

The learned editor is trained against a *guide* classifier and scored by the *judge* (bench_quality), two networks
trained the same way from different seeds. This runs every +2 edit of the textbook attributes on validation faces
labelled without the attribute and scores it with both: if the editor only fooled its guide, the guide would see
far fewer side effects than the judge. It also builds the per-face alternative the learned editor is compared
with: at each face, the guide's gradient of the edited attribute's logit with the gradients of every unrelated
attribute (|phi| < 0.2, the judge's definition) projected out, in the aggregate posterior's whitened coordinates,
followed in `--steps` steps and moved exactly as far as the class-mean vector moves (InterFaceGAN's conditional
manipulation, per face and through the image instead of on codes).

    python -m bench.bench_edit_guide --faces 100          # about 15 min on 2 cores, most of it the per-face Jacobians
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from bench import bench_quality as quality
from bench.common import DEFAULT_DATA, REPO_ROOT, RESULTS_DIR, Table, fmt, machine, write_report
from service.core.bundle import DEFAULT_MODEL
from service.core.runtime import FaceModel
from training.card import EDIT_ATTRIBUTES
from training.classifier import AttributeClassifier
from training.config import EditConfig
from training.edits import guide_classifier, last_layer
from training.onnx_tf import OnnxFunction
from training.prepared import DEFAULT_CACHE, prepare_data

STRENGTH = 2.0
#: Faces per Jacobian: each holds one backward pass per attribute kept.
CHUNK = 25
METHODS = ("vectors", "learned", "per-face gradient")


class GuideGradients:
    """Jacobians of the guide's logits through the bundle's decoder, with respect to the code."""

    def __init__(self, model: FaceModel, guide: AttributeClassifier) -> None:
        decoder = OnnxFunction(model.bundle.decoder_path)
        features = keras.Model(guide.model.input, guide.model.outputs[1])
        kernel, bias = (tf.constant(w) for w in last_layer(guide))

        @tf.function(reduce_retracing=True)
        def jacobian(z: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                tape.watch(z)
                logits = tf.matmul(features(decoder(z) * 255.0, training=False), kernel) + bias
                chosen = tf.gather(logits, columns, axis=1)
            return tape.batch_jacobian(chosen, z)

        self._jacobian = jacobian

    def __call__(self, z: np.ndarray, columns: Sequence[int]) -> np.ndarray:
        """[N, len(columns), z_dim]."""
        parts = [
            self._jacobian(tf.constant(z[i : i + CHUNK]), tf.constant(list(columns), tf.int32)).numpy()
            for i in range(0, len(z), CHUNK)
        ]
        return np.concatenate(parts)


def per_face_moves(
    gradients: GuideGradients,
    cholesky: np.ndarray,
    z: np.ndarray,
    target: int,
    kept: Sequence[int],
    lengths: np.ndarray,
    steps: int,
) -> np.ndarray:
    """Codes [N, z_dim] moved up the guide's `target` logit with the `kept` logits' gradients projected out, in
    whitened coordinates (z = mean + L w), `steps` equal steps, the whole move rescaled to `lengths` [N]."""
    moved = z.copy()
    for _ in range(steps):
        jacobian = gradients(moved, [target, *kept]) @ cholesky  # d logits / d w
        directions = []
        for rows in jacobian:
            basis, _ = np.linalg.qr(rows[1:].T)
            free = rows[0] - basis @ (basis.T @ rows[0])
            step = cholesky @ free
            directions.append(step / np.linalg.norm(step))
        moved = moved + np.stack(directions) * (lengths / steps)[:, np.newaxis]
    change = moved - z
    return z + change * (lengths / np.linalg.norm(change, axis=1))[:, np.newaxis]


def judged(
    classifier: AttributeClassifier,
    faces: np.ndarray,
    edited: np.ndarray,
    moved: np.ndarray,
    target: int,
    unrelated: Sequence[int],
) -> dict[str, float]:
    """Success, side effects and the random move's side effects, as `classifier` sees them, from the decoded faces
    (uint8 [N, H, W, 3]) before the edit, after it and after the random move."""
    unedited, _ = quality.judge(classifier, faces)
    after, _ = quality.judge(classifier, edited)
    random, _ = quality.judge(classifier, moved)
    side = float((after != unedited)[:, list(unrelated)].mean())
    floor = float((random != unedited)[:, list(unrelated)].mean())
    return {"success": float(after[:, target].mean()), "side_effects": side, "random": floor, "ratio": side / floor}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    model = FaceModel.load(args.model, threads=0, max_batch=quality.BATCH, max_strength=3.0)
    config = quality.data_config(model.bundle.manifest.training, None)
    data = prepare_data(config, args.data, args.cache_dir, skip_bad=False)
    assert data.labels is not None
    judge = quality.load_classifier(argparse.Namespace(**vars(args), train_classifier=False), config)
    edit_config = EditConfig()
    guide = guide_classifier(args.guide_dir, config, data, edit_config.guide_seeds[0], edit_config.guide_epochs)
    names = data.dataset.attribute_names
    phi = quality.phi_correlations(data.labels[data.train])
    gradients = GuideGradients(model, guide)
    cholesky = model.bundle.latent_stats.cholesky_array
    vectors = model.without_editor()
    rows = []
    for name in args.attributes:
        column = names.index(name)
        unrelated = [j for j, other in enumerate(names) if j != column and abs(phi[column, j]) < quality.UNRELATED_PHI]
        chosen = np.flatnonzero(data.labels[data.val, column] == -1)[: args.faces]
        z = quality.batched(lambda pixels: model.encode_pixels(pixels).code, data.images[data.val[chosen]])
        straight = vectors.edit_codes(z, {name: STRENGTH})
        lengths = np.linalg.norm(straight - z, axis=1)
        print(f"{name}: per-face gradients ...", flush=True)
        kept = [guide.column(names[j]) for j in unrelated]
        edits = {
            "vectors": straight,
            "learned": model.edit_codes(z, {name: STRENGTH}),
            "per-face gradient": per_face_moves(gradients, cholesky, z, guide.column(name), kept, lengths, args.steps),
        }
        faces = quality.batched(model.decode, z)
        for method, edited in edits.items():
            moved = z + quality.random_moves(model, np.linalg.norm(edited - z, axis=1), column)
            decoded = quality.batched(model.decode, edited), quality.batched(model.decode, moved)
            row: dict[str, Any] = {"attribute": name, "method": method, "faces": len(z)}
            for role, classifier in (("guide", guide), ("judge", judge)):
                columns = [classifier.column(names[j]) for j in unrelated]
                row[role] = judged(classifier, faces, *decoded, classifier.column(name), columns)
            rows.append(row)
            print(row, flush=True)
    return {"machine": machine(), "model": str(args.model), "strength": STRENGTH, "steps": args.steps, "rows": rows}


def tables(report: dict[str, Any]) -> list[Table]:
    def cells(values: dict[str, float]) -> list[str | None]:
        return [quality.pct(values["success"]), fmt(values["side_effects"], 3), fmt(values["ratio"], 2)]

    return [
        Table(
            f"{report['model']}: +{report['strength']:g} edits as the guide and the judge see them",
            [
                "attribute",
                "method",
                "faces",
                "guide: success",
                "side effects",
                "÷ random",
                "judge: success",
                "side effects",
                "÷ random",
            ],
            [[r["attribute"], r["method"], r["faces"], *cells(r["guide"]), *cells(r["judge"])] for r in report["rows"]],
            "Validation faces labelled without the attribute; side effects: unrelated verdicts (|phi| < 0.2) changed; "
            "÷ random: over a random move as long as each face's edit. vectors: the class-mean move; learned: the "
            "bundle's editor (trained against the guide); per-face gradient: the guide's gradient of the attribute "
            f"with every unrelated attribute's projected out, {report['steps']} steps, as long as the vectors' move.",
        )
    ]


def headline(report: dict[str, Any]) -> str:
    def span(method: str, role: str) -> str:
        values = [r[role]["ratio"] for r in report["rows"] if r["method"] == method]
        return f"{min(values):.2f}-{max(values):.2f}"

    return "side effects ÷ random move at +2, guide / judge: " + "; ".join(
        f"{method} {span(method, 'guide')} / {span(method, 'judge')}" for method in METHODS
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--classifier", type=Path, help="the judge (default: runs/classifier-<size>, trained if absent)"
    )
    parser.add_argument("--guide-dir", type=Path, default=REPO_ROOT / "runs" / "edit-guide-64")
    parser.add_argument("--attributes", nargs="+", default=list(EDIT_ATTRIBUTES))
    parser.add_argument("--faces", type=int, default=100, help="validation faces per attribute")
    parser.add_argument("--steps", type=int, default=4, help="per-face gradient steps")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "edit_guide.json")
    args = parser.parse_args(argv)
    report = measure(args)
    write_report(args.out, report, tables(report), headline(report))


if __name__ == "__main__":
    main()
