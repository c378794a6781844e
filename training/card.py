"""Model-card figures and figures of merit for a finished bundle, computed through the service's own runtime.

Everything here runs the exported ONNX models via `service.core.runtime.FaceModel`, so the pictures show
exactly what the service returns: reconstructions, prior vs sampling-trick samples, and attribute
edit strips on real validation faces.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from service.core.imaging import make_grid
from service.core.runtime import FaceModel, SamplingMode
from training.prepared import PreparedData

log = logging.getLogger(__name__)

CARD_DIR = "card"
EDIT_ATTRIBUTES = ("Smiling", "Male", "Eyeglasses", "Mustache", "Chubby")
EDIT_STRENGTHS = (-3, -2, -1, 0, 1, 2, 3)


def sharpness(faces: np.ndarray) -> np.ndarray:
    """Per face: variance of the 3x3 Laplacian of the grey image (ITU-R 601 luma, 0-255): what blur removes first.

    The card and bench/bench_quality.py report its mean over faces, divided by the real photos' mean.
    """
    grey = faces.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    laplacian = (
        grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] - 4 * grey[:, 1:-1, 1:-1]
    )
    return laplacian.reshape(len(faces), -1).var(axis=1)


def grid(rows: list[np.ndarray], labels: list[str] | None = None, scale: int = 2) -> Image.Image:
    """Equal-length rows of uint8 faces [n, h, w, 3] as one picture (the service's grid), labelled on the left."""
    tiled = make_grid(np.concatenate(rows), columns=len(rows[0]))
    height, width = tiled.shape[:2]
    image = Image.fromarray(tiled).resize((width * scale, height * scale), Image.Resampling.NEAREST)
    if not labels:
        return image
    label_width = 8 + 6 * max(len(label) for label in labels)
    labelled = Image.new("RGB", (image.width + label_width, image.height), "white")
    labelled.paste(image, (label_width, 0))
    draw = ImageDraw.Draw(labelled)
    row_height = image.height // len(labels)
    for i, label in enumerate(labels):
        draw.text((4, i * row_height + row_height // 2 - 5), label, fill="black")
    return labelled


def _faces_by(data: PreparedData, attribute: str, sign: int, count: int, skip: int = 0) -> np.ndarray | None:
    """`count` validation faces whose label of `attribute` is `sign` (1 or -1), from the `skip`-th on."""
    if data.labels is None or attribute not in data.dataset.attribute_names:
        return None
    column = data.dataset.attribute_names.index(attribute)
    candidates = data.val[data.labels[data.val, column] == sign]
    if len(candidates) == 0:
        return None
    return data.images[np.roll(candidates, -skip)[:count]]


def _conditional_edit_figure(models: dict[str, FaceModel], data: PreparedData, path: Path) -> None:
    """Women given Mustache +2 alone and with keep=["Male"], by each of `models` (label: model): the conditional
    edit should add a moustache without changing the sex."""
    model = next(iter(models.values()))
    women = _faces_by(data, "Male", -1, 8)
    if women is None or not {"Mustache", "Male"} <= set(model.bundle.attributes):
        return
    z = model.encode_pixels(women).code
    rows, labels = [women, model.decode(z)], ["photo", "reconstructed"]
    for label, editing in models.items():
        rows += [
            editing.decode(editing.edit_codes(z, {"Mustache": 2})),
            editing.decode(editing.edit_codes(z, {"Mustache": 2}, keep=["Male"])),
        ]
        labels += [f"{label}: Mustache +2", f"{label}: + keep Male"]
    grid(rows, labels).save(path)


def _edit_strips(model: FaceModel, data: PreparedData) -> tuple[list[np.ndarray], list[str]]:
    """Two validation faces without each of EDIT_ATTRIBUTES: the photo, then the edit at every EDIT_STRENGTHS."""
    rows, labels = [], []
    for i, name in enumerate(EDIT_ATTRIBUTES):
        faces = _faces_by(data, name, -1, 2, skip=2 * i)
        if faces is None or name not in model.bundle.attributes:
            continue
        for face in faces:  # faces without the attribute, so +edits have something to add
            z = model.encode_pixels(face[np.newaxis]).code[0]
            latents = np.concatenate([model.edit(z, {name: s}) for s in EDIT_STRENGTHS])
            rows.append(np.concatenate([face[np.newaxis], model.decode(latents)]))
            labels.append(name)
    return rows, labels


def write_card_figures(bundle_dir: Path, data: PreparedData, seed: int = 0) -> dict[str, object]:
    """Write card/*.png into the bundle folder and return the figures of merit shown in the card."""
    model = FaceModel.load(bundle_dir, threads=0, max_batch=10_000, max_strength=10.0)
    out = bundle_dir / CARD_DIR
    out.mkdir(exist_ok=True)
    val = data.images[data.val]

    rows, labels = [], []
    for name, sign in (("men", 1), ("women", -1)):
        originals = _faces_by(data, "Male", sign, 10)
        if originals is None:
            continue
        rows += [originals, model.decode(model.encode_pixels(originals).code)]
        labels += [f"{name}: photo", "reconstructed"]
    if not rows:
        rows, labels = [val[:10], model.decode(model.encode_pixels(val[:10]).code)], ["photo", "reconstructed"]
    grid(rows, labels).save(out / "reconstructions.png")

    rows, labels = [], []
    for mode in SamplingMode:  # same eps for every mode: only the sampling rule differs
        faces = model.decode(model.sample_latents(20, np.random.default_rng(seed), mode, 1.0))
        rows += [faces[:10], faces[10:]]
        labels += [mode.value, mode.value]
    grid(rows, labels).save(out / "samples.png")

    rows, labels = _edit_strips(model, data)
    if rows:
        grid(rows, labels).save(out / "edits.png")
    models = {"served": model}
    if model.editor is not None:  # the same faces along the attribute vectors alone, as before the editor
        vectors_alone = model.without_editor()
        rows, labels = _edit_strips(vectors_alone, data)
        if rows:
            grid(rows, labels).save(out / "edits_vectors.png")
        models = {"learned": model, "vectors": vectors_alone}
    _conditional_edit_figure(models, data, out / "conditional_edits.png")

    all_reconstructions = np.concatenate(
        [model.decode(model.encode_pixels(val[i : i + 256]).code) for i in range(0, len(val), 256)]
    )
    many = 256
    figures = {
        "val_reconstruction_mse": float(np.mean((all_reconstructions / 255.0 - val / 255.0) ** 2)),
        "sharpness_real": float(sharpness(val).mean()),
        "sharpness_reconstructions": float(sharpness(all_reconstructions).mean()),
        **{
            f"sharpness_{mode.value}": float(
                sharpness(model.decode(model.sample_latents(many, np.random.default_rng(1), mode, 1.0))).mean()
            )
            for mode in SamplingMode
        },
        "auc": {name: model.bundle.attributes[name].auc for name in EDIT_ATTRIBUTES if name in model.bundle.attributes},
    }
    (out / "figures.json").write_text(json.dumps(figures, indent=1) + "\n")
    log.info("card figures written to %s: %s", out, figures)
    return figures
