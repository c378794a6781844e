"""Model quality of one or more bundles, side by side, through the service's runtime, judged at 0.5.

Every number comes from `service.core.runtime.FaceModel` (onnxruntime, the code the service runs) on the validation
split of the training package (`training.prepared.prepare_data` with the bundle's own TrainConfig), so the faces are
new to the VAE and to the judge: training/classifier.py's CNN, trained on the training split with blur and noise
augmentation so that a soft VAE face is judged on its content, not on its blur. Every verdict is p >= 0.5.

The quality table, per bundle:

1. Reconstruction sharpness: mean over faces of the variance of the Laplacian (grey, 3x3 kernel
   [[0,1,0],[1,-4,1],[0,1,0]]) of faces decoded from their codes (what /encode gives: z_mean refined
   `--refine-steps` times, see `FaceModel.refine`), over the same mean on the real validation faces
   (1 = as sharp as the photos).
2. Sample sharpness: the same ratio for samples at T = 1, for the bundle's default sampling mode and every mode.
3. Male kept: share of validation faces whose reconstruction gets the classifier's Male verdict of the photo;
   all-40 kept: mean agreement of all 40 verdicts between photo and reconstruction.
4. Fréchet distance in the classifier's `features` between the real validation faces and generated faces, per
   sampling mode and temperature (the same seeds, so the same eps, for every mode), next to two anchors with the
   same number of faces: real training faces (the floor) and their reconstructions.
5. Edit success: validation faces labelled without the attribute are edited +1, +2, +3 (what /edit does:
   FaceModel.edit_codes, the bundle's learned editor where it has one); success = share of edited faces judged to
   have it. Faces labelled with it are edited -1, -2, -3; success = share judged not to have it.
6. Side effects: mean over the edited faces and over the attributes *unrelated* to the edited one of
   |verdict(edited) - verdict(unedited reconstruction)| (binary verdicts). Unrelated = the absolute phi
   correlation of the two attributes' CelebA labels on the TRAINING split is below 0.2, so an edit is not
   blamed for changing what naturally goes with it (Mustache and Male, Heavy_Makeup and Male ...).
   Next to it the same count for a move as long as each face's edit in a random direction shaped like the codes'
   spread (aggregate-posterior Cholesky factor times noise, a fresh direction per face): the judge's floor, what
   merely moving a face that far changes; `side_ratio` is the edit's count over the floor (1 = no more disruptive
   than a random nudge of its size).
7. The person kept, edit over random move: the perceptual distance between the edited and the unedited face
   (`perceptual_distances`: LPIPS's distance in the judge's first three ReLU layers, the layers the VAE's perceptual
   loss compares) over the whole picture (`person_perceptual`) and over the inner face (`person_inner_face`); the
   distance in the judge's penultimate features (`person`), which read attributes, so any edit that shows moves
   them; and identity drift, the mean absolute pixel difference (0-255). For scale, the perceptual distance
   between two different people's unedited faces (`different_people`).
8. Validation reconstruction MSE per pixel and channel on the [0, 1] scale (the manifest's measure).
9. Mustache +2 on women with keep=["Male"] and without: the moustache as the upper-lip judge sees it
   (training/classifier.py's UPPER_LIP, learnt among men from the upper lip alone; the whole-face judge never saw a
   woman with a moustache), on the edited faces, the unedited ones and a random move as long; the Male verdict kept.

Direction comparison: the bundle's training split is encoded and, for each method of
`training.latents.DIRECTION_METHODS`, attribute vectors are rebuilt and judged as in 5-7 at +-1/2/3; plus
conditional edits (Mustache +2 on women with keep=["Male"] and without: how often the Male verdict flips).

Old bundles (format_version 1, which the current loader refuses) are compared through an adapter: with
`--old-bundle-rev REV` the bundle's files are taken from git at REV, their latent statistics recomputed over the
training split with its own std_scalar and the textbook recipe as default (old /sample: mean + std_scalar * T * eps),
and its attribute vectors kept as mean differences stepped by projection_std (old /edit).

    python -m bench.bench_quality --model models/celeba-64 --old-bundle-rev fa49e45   # new and old, side by side
    python -m bench.bench_quality --train-classifier                                  # models/celeba-64 alone
    python -m bench.bench_quality --old-bundle-rev fa49e45 --max-images 600 --samples 200 --repeats 1   # smoke

Writes JSON (--out), the tables as Markdown next to it (.md) and PNG figures into --figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import scipy.linalg

from bench.common import DEFAULT_DATA, FIGURES_DIR, REPO_ROOT, RESULTS_DIR, Table, fmt, machine, write_report
from service.core.bundle import (
    ATTRIBUTES_FILE,
    DECODER_FILE,
    DEFAULT_MODEL,
    ENCODER_FILE,
    LATENT_STATS_FILE,
    MANIFEST_FILE,
    AttributeVector,
    AttributeVectors,
    Manifest,
    ModelBundle,
    Preprocess,
)
from service.core.runtime import REFINE_STEPS, FaceModel, SamplingMode
from service.core.sessions import open_session
from training.card import EDIT_ATTRIBUTES, grid, sharpness
from training.classifier import (
    CONFIG_FILE,
    INNER_FACE,
    PERCEPTUAL_LAYERS,
    UPPER_LIP,
    AttributeClassifier,
    ClassifierConfig,
    default_out,
    perceptual_distance,
    train_classifier,
)
from training.config import JUDGE_EPOCHS, EditConfig, TrainConfig
from training.edits import red_patch, where_it_occurs
from training.export import encode
from training.latents import DIRECTION_METHODS, aggregate_posterior, attribute_vectors
from training.prepared import DEFAULT_CACHE, PreparedData, prepare_data

TEMPERATURES = (0.5, 0.75, 1.0, 1.25)
STRENGTHS = (1.0, 2.0, 3.0)
THRESHOLD = 0.5
UNRELATED_PHI = 0.2
BATCH = 256
SAMPLE_GRID = 10
SHOWN_FACES = 8
#: Faces per attribute in the edit-against-random-move figure (three rows each: the figure stays a readable size).
SHOWN_EDITED_FACES = 5
OLD_BUNDLE_PATH = "models/celeba-64"
OLD_BUNDLE_FILES = (MANIFEST_FILE, ENCODER_FILE, DECODER_FILE, LATENT_STATS_FILE, ATTRIBUTES_FILE)
#: (attribute, strength, attribute kept, label of the faces edited: -1 = faces without the kept attribute).
CONDITIONAL_EDITS = (("Mustache", 2.0, "Male", -1),)
#: The model's quality targets, shown next to the measurements.
TARGETS = {
    "reconstruction_sharpness": 0.30,
    "sample_sharpness": 0.25,
    "male_kept": 0.95,
    "all_kept": 0.93,
    "side_ratio": 1.0,
    "person_perceptual": 1.0,
    "mse": 0.0105,
    "success": {"Smiling": 0.9, "Male": 0.9, "Eyeglasses": 0.9, "Mustache": 0.9, "Chubby": 0.9},
    #: Mustache +2 with keep=["Male"] on women: moustache shown, still judged female.
    "conditional": (0.8, 0.9),
}


def batched(function: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray) -> np.ndarray:
    """Apply `function` in batches of BATCH rows, so memory stays flat for any number of faces."""
    return np.concatenate([function(inputs[start : start + BATCH]) for start in range(0, len(inputs), BATCH)])


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] (the FID formula).

    Tr sqrt(Ca Cb) is computed as the sum of square roots of the eigenvalues of the symmetric matrix
    sqrt(Ca) Cb sqrt(Ca), which has the same spectrum: exact, and stable where a general `sqrtm` of the
    non-symmetric product warns and loses accuracy (ReLU features with dead units make both covariances singular).
    """
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = scipy.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    trace_covmean = np.sum(np.sqrt(np.clip(scipy.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_covmean)


def phi_correlations(labels: np.ndarray) -> np.ndarray:
    """Phi coefficients (Pearson on 0/1) between every pair of attribute columns; 0 where a column is constant."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(np.corrcoef((labels > 0).astype(np.float64), rowvar=False))


# ---- the bundles under test ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Subject:
    """One bundle under test: a short label, the model as the service runs it, and its encoded faces."""

    label: str
    source: str
    model: FaceModel
    data: PreparedData
    z_train: np.ndarray
    z_val: np.ndarray
    min_positives: int

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", self.label).strip("-")


def data_config(training: Mapping[str, Any], max_images: int | None) -> TrainConfig:
    """The settings `prepare_data` needs (framing and split) from a manifest's `training` section, old or new."""
    keys = ("image_size", "crop", "val_fraction")
    return TrainConfig(**{key: training[key] for key in keys if key in training}, max_images=max_images)


def extract_old_bundle(rev: str, path: str, into: Path) -> Path:
    """The bundle files at `rev` (git show), written to `into`."""
    into.mkdir(parents=True, exist_ok=True)
    for file in OLD_BUNDLE_FILES:
        blob = subprocess.run(
            ["git", "show", f"{rev}:{path}/{file}"], cwd=REPO_ROOT, check=True, capture_output=True
        ).stdout
        (into / file).write_bytes(blob)
    return into


def open_old_bundle(
    folder: Path, label: str, data_for: Callable[[Mapping[str, Any]], PreparedData], limits: Mapping[str, float]
) -> Subject:
    """A format-1 bundle as the old service ran it, through today's FaceModel.

    Old /sample was mean + std_scalar * T * eps (today's `textbook` mode, with its own std_scalar) and old /edit
    moved strength * projection_std along the class-mean difference; the aggregate-posterior statistics the other
    modes need are recomputed over the training split.
    """
    manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    old_stats = json.loads((folder / LATENT_STATS_FILE).read_text(encoding="utf-8"))
    old_vectors = json.loads((folder / ATTRIBUTES_FILE).read_text(encoding="utf-8"))
    encoder = open_session(folder / ENCODER_FILE, spin=False)
    decoder = open_session(folder / DECODER_FILE, spin=False)

    data = data_for(manifest["training"])
    z_train, z_log_var = encode(encoder, data.images[data.train])
    stats = aggregate_posterior(z_train, z_log_var, default_mode="textbook")
    stats = stats.model_copy(update={"std_scalar": float(old_stats["std_scalar"])})
    vectors = [
        AttributeVector(**entry, method="mean_difference", step=entry["projection_std"]) for entry in old_vectors
    ]
    # Not validated against today's Manifest: only name, sizes and framing are read from it.
    fields = {**manifest, "preprocess": Preprocess.model_validate(manifest["preprocess"])}
    bundle = ModelBundle(folder, Manifest.model_construct(**fields), stats, AttributeVectors(vectors))
    model = FaceModel(
        bundle, encoder, decoder, max_batch=int(limits["batch"]), max_strength=limits["strength"], refine_steps=0
    )
    z_val, _ = encode(encoder, data.images[data.val])
    return Subject(
        label,
        f"git {label}",
        model,
        data,
        z_train,
        z_val,
        int(manifest["training"].get("min_positives", TrainConfig().min_positives)),
    )


def open_bundle(
    path: Path,
    label: str,
    data_for: Callable[[Mapping[str, Any]], PreparedData],
    limits: Mapping[str, float],
    refine_steps: int = REFINE_STEPS,
) -> Subject:
    """A current bundle, loaded and verified as the service loads it. The validation faces' codes are what /encode
    gives (`FaceModel.encode_pixels`, refined), the training faces' the posterior means the vectors were built on."""
    model = FaceModel.load(
        path, threads=0, max_batch=int(limits["batch"]), max_strength=limits["strength"], refine_steps=refine_steps
    )
    training = model.bundle.manifest.training
    data = data_for(training)
    z_train, _ = encode(model.encoder, data.images[data.train])
    z_val = batched(lambda pixels: model.encode_pixels(pixels).code, data.images[data.val])
    min_positives = int(training.get("min_positives", TrainConfig().min_positives))
    return Subject(label, str(path), model, data, z_train, z_val, min_positives)


def with_vectors(model: FaceModel, vectors: list[AttributeVector]) -> FaceModel:
    """The same networks and statistics with other attribute vectors."""
    bundle = dataclasses.replace(model.bundle, attributes=AttributeVectors(vectors))
    return FaceModel(bundle, model.encoder, model.decoder, max_batch=model.max_batch, max_strength=model.max_strength)


# ---- measurements -------------------------------------------------------------------------------------------------


def classifier_section(classifier: AttributeClassifier, attributes: Sequence[str]) -> dict[str, Any]:
    auc = classifier.report["validation_auc"]
    config = classifier.config
    return {
        "attributes": {name: auc.get(name) for name in attributes},
        "mean_all": classifier.report["mean_validation_auc"],
        "all": auc,
        "train": classifier.report["train"],
        "validation": classifier.report["validation"],
        "epochs": config.epochs,
        "augmentation": {
            "blur_probability": getattr(config, "blur_probability", 0.0),
            "blur_sigma": getattr(config, "blur_sigma", None),
            "noise_std": getattr(config, "noise_std", 0.0),
        },
    }


def upper_lip_section(judge_: AttributeClassifier, data: PreparedData) -> dict[str, Any]:
    """The upper-lip judge's validation figures (among men, as it learnt) and how often it sees a moustache on the
    real validation women, none of whom has one in the labels."""
    assert data.labels is not None
    names = data.dataset.attribute_names
    (name,) = judge_.attributes
    women = data.val[data.labels[data.val, names.index("Male")] < 0]
    probabilities, _ = judge_.predict(data.images[women])
    return {
        "attribute": name,
        "region": judge_.config.region,
        "among": judge_.config.among,
        "validation_auc": judge_.report["validation_auc"][name],
        "validation_at_half": judge_.report["validation_at_half"][name],
        "train": judge_.report["train"],
        "validation": judge_.report["validation"],
        "real_women": len(women),
        "real_women_shown": float(np.mean(probabilities[:, 0] >= THRESHOLD)),
    }


@dataclasses.dataclass(frozen=True)
class Real:
    """What the judge and the sharpness measure say about the real validation faces (computed once per split)."""

    verdicts: np.ndarray  # bool [N, attributes]
    features: np.ndarray
    sharpness: float


def judge(classifier: AttributeClassifier, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary verdicts (p >= 0.5) and penultimate features."""
    probabilities, features = classifier.predict(faces)
    return probabilities >= THRESHOLD, features


def reconstruction(subject: Subject, classifier: AttributeClassifier, real: Real) -> dict[str, Any]:
    """MSE, sharpness ratio and verdict agreement of validation faces decoded from their codes."""
    faces = subject.data.images[subject.data.val]
    decoded = batched(subject.model.decode, subject.z_val)
    mse = np.mean((decoded.astype(np.float64) / 255.0 - faces.astype(np.float64) / 255.0) ** 2, axis=(1, 2, 3))
    verdicts, _ = judge(classifier, decoded)
    male = classifier.column("Male")
    kept = verdicts[:, male] == real.verdicts[:, male]
    men = real.verdicts[:, male]
    return {
        "images": len(faces),
        "mse": float(mse.mean()),
        "psnr_of_mean_mse": float(10 * np.log10(1.0 / mse.mean())),
        "manifest_mse": subject.model.bundle.manifest.metrics.get("val_reconstruction_mse"),
        "sharpness": float(sharpness(decoded).mean() / real.sharpness),
        "male_kept": float(kept.mean()),
        "male_kept_men": float(kept[men].mean()) if men.any() else None,
        "male_kept_women": float(kept[~men].mean()) if (~men).any() else None,
        "all_kept": float(np.mean(verdicts == real.verdicts)),
        "kept_per_attribute": {
            name: float(np.mean(verdicts[:, i] == real.verdicts[:, i])) for i, name in enumerate(classifier.attributes)
        },
    }


def sampling(
    subject: Subject,
    classifier: AttributeClassifier,
    real: Real,
    samples: int,
    repeats: int,
    temperatures: Sequence[float],
    seed: int,
) -> dict[str, Any]:
    """FD to the validation faces per (mode, temperature), mean and std over `repeats` seeds, plus two anchors;
    sharpness ratio of the T = 1 samples of each mode."""
    model, data = subject.model, subject.data
    temperatures = sorted({*temperatures, 1.0})
    anchor_count = min(samples, len(data.train))
    fds: dict[str, list[float]] = {}
    sharp: dict[str, list[float]] = {}
    for repeat in range(repeats):
        chosen = np.random.default_rng(seed + repeat).choice(len(data.train), anchor_count, replace=False)
        train_faces = data.images[data.train[chosen]]
        fds.setdefault("real training faces", []).append(
            frechet_distance(classifier.predict(train_faces)[1], real.features)
        )
        rebuilt = batched(model.decode, subject.z_train[chosen])
        fds.setdefault("their reconstructions", []).append(
            frechet_distance(classifier.predict(rebuilt)[1], real.features)
        )
        for mode in SamplingMode:
            for temperature in temperatures:
                # The same seed for every mode: the same eps, only the sampling rule differs.
                z = model.sample_latents(samples, np.random.default_rng(seed + repeat), mode, temperature)
                generated = batched(model.decode, z)
                key = f"{mode.value} {temperature:g}"
                fds.setdefault(key, []).append(frechet_distance(classifier.predict(generated)[1], real.features))
                if temperature == 1.0:
                    sharp.setdefault(mode.value, []).append(float(sharpness(generated).mean() / real.sharpness))
        print(f"  {subject.label}: FD repeat {repeat + 1}/{repeats} done")
    rows = [
        {"setting": key, "fd_mean": float(np.mean(v)), "fd_std": float(np.std(v)), "fd": v} for key, v in fds.items()
    ]
    return {
        "samples": samples,
        "anchor_faces": anchor_count,
        "real_validation_faces": len(real.features),
        "repeats": repeats,
        "temperatures": temperatures,
        "modes": [mode.value for mode in SamplingMode],
        "default_mode": str(model.bundle.latent_stats.default_mode),
        "sharpness": {mode: float(np.mean(values)) for mode, values in sharp.items()},
        "rows": rows,
    }


def unrelated_columns(subject: Subject, classifier: AttributeClassifier) -> dict[str, list[int]]:
    """Per attribute: classifier columns whose training-split labels have |phi| < 0.2 with it (itself excluded)."""
    names = subject.data.dataset.attribute_names
    assert subject.data.labels is not None
    phi = phi_correlations(subject.data.labels[subject.data.train])
    result = {}
    for i, name in enumerate(names):
        result[name] = [
            classifier.column(other)
            for j, other in enumerate(names)
            if j != i and other in classifier.attributes and abs(phi[i, j]) < UNRELATED_PHI
        ]
    return result


@dataclasses.dataclass(frozen=True)
class Judged:
    """Faces [N, H, W, 3] with the judge's verdicts [N, A], penultimate features [N, F] and first PERCEPTUAL_LAYERS
    ReLU activations (`looks`, what `perceptual_distances` compares) on them."""

    faces: np.ndarray
    verdicts: np.ndarray
    features: np.ndarray
    looks: list[np.ndarray]

    @classmethod
    def of(cls, classifier: AttributeClassifier, faces: np.ndarray) -> Judged:
        verdicts, features = judge(classifier, faces)
        return cls(faces, verdicts, features, classifier.activations(faces, PERCEPTUAL_LAYERS))


def perceptual_distances(ours: Sequence[np.ndarray], theirs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per pair of faces, the perceptual distance (`training.classifier.perceptual_distance`, the one the editor
    trains with) between two faces' `looks`, over the whole picture and over `INNER_FACE` only. [N] each."""
    return (
        np.asarray(perceptual_distance(ours, theirs)),
        np.asarray(perceptual_distance(ours, theirs, INNER_FACE)),
    )


def edit_effect(
    model: FaceModel,
    classifier: AttributeClassifier,
    z: np.ndarray,
    unedited: Judged,
    strengths: Mapping[str, float],
    target: int,
    positive: bool,
    unrelated: Sequence[int],
    keep: Sequence[str] = (),
    occurs: np.ndarray | None = None,
    upper_lip: AttributeClassifier | None = None,
) -> dict[str, Any]:
    """One edit applied to every z as /edit does (`FaceModel.edit_codes`), against the unedited faces: success, side
    effects, identity drift and the person kept; and the same for a random move as long as each face's own edit
    (`random_moves`, the judge's floor at that distance).

    `side_ratio` is the edit's side effects over the random move's; `person_perceptual` and `person_inner_face` the
    mean perceptual distance from the unedited face (`perceptual_distances`), whole picture and inner face, and
    `person` the mean distance in the judge's penultimate features, each edit over random move (below 1: the edit
    keeps the person better than a random nudge of its size). `success_where_it_occurs` is the success over the
    faces `occurs` [N] marks (all by default): those of a sex in which the attribute occurs in the training labels
    (`where_it_occurs`). With an `upper_lip` judge, `upper_lip` is the share of the edited, the unedited and the
    randomly moved faces it sees its attribute on (`shown_by`). `red_patch` is how much redder the reddest patch of
    the inner face got (`training.edits.red_patch`, YCbCr's Cr, 0-1), a red nose every classifier reads as male and
    so no side-effect count sees; `random_red_patch` the random move's."""
    edited_codes = model.edit_codes(z, strengths, keep)
    where = np.ones(len(z), bool) if occurs is None else occurs
    lengths = np.linalg.norm(edited_codes - z, axis=1)
    edited = Judged.of(classifier, batched(model.decode, edited_codes))
    moved = Judged.of(classifier, batched(model.decode, z + random_moves(model, lengths, target)))
    changed = edited.verdicts != unedited.verdicts
    random_changed = moved.verdicts != unedited.verdicts
    side = float(changed[:, list(unrelated)].mean()) if len(unrelated) else None
    random_side = float(random_changed[:, list(unrelated)].mean()) if len(unrelated) else None
    distance = float(np.linalg.norm(edited.features - unedited.features, axis=1).mean())
    random_distance = float(np.linalg.norm(moved.features - unedited.features, axis=1).mean())
    perceptual, inner = perceptual_distances(edited.looks, unedited.looks)
    random_perceptual, random_inner = perceptual_distances(moved.looks, unedited.looks)
    effect = {
        "success": float(np.mean(edited.verdicts[:, target] == positive)),
        "success_where_it_occurs": float(np.mean(edited.verdicts[where, target] == positive)),
        "side_effects": side,
        "random_side_effects": random_side,
        "side_ratio": ratio(side, random_side),
        "person": ratio(distance, random_distance),
        "person_perceptual": ratio(float(perceptual.mean()), float(random_perceptual.mean())),
        "person_inner_face": ratio(float(inner.mean()), float(random_inner.mean())),
        "perceptual_distance": float(perceptual.mean()),
        "move_length": float(lengths.mean()),
        "drift": float(np.mean(np.abs(edited.faces.astype(np.float32) - unedited.faces.astype(np.float32)))),
        "red_patch": float(np.mean(red_patch(unedited.faces, edited.faces))),
        "random_red_patch": float(np.mean(red_patch(unedited.faces, moved.faces))),
        "changed": changed.mean(axis=0),
        "random_changed": random_changed.mean(axis=0),
    }
    if upper_lip is not None:
        faces = {"edited": edited.faces, "unedited": unedited.faces, "random_move": moved.faces}
        effect["upper_lip"] = {key: shown_by(upper_lip, shown) for key, shown in faces.items()}
    return effect


def seen_on(judge_: AttributeClassifier, faces: np.ndarray) -> np.ndarray:
    """[N] bool: the faces a one-attribute judge (the upper-lip judge) sees its attribute on."""
    probabilities, _ = judge_.predict(faces)
    return probabilities[:, 0] >= THRESHOLD


def shown_by(judge_: AttributeClassifier, faces: np.ndarray) -> float:
    """The share of `faces` a one-attribute judge sees its attribute on (`seen_on`)."""
    return float(np.mean(seen_on(judge_, faces)))


def random_moves(model: FaceModel, lengths: np.ndarray, seed: int) -> np.ndarray:
    """One random direction per face, drawn like the codes' spread (L @ eps, the aggregate posterior's shape), as
    long as `lengths` [N]: a fresh direction per face, so the floor is an average over directions, not one draw."""
    eps = np.random.default_rng(seed).standard_normal((len(lengths), model.z_dim)).astype(np.float32)
    directions = eps @ model.bundle.latent_stats.cholesky_array.T
    return directions * (lengths / np.linalg.norm(directions, axis=1))[:, np.newaxis].astype(np.float32)


@dataclasses.dataclass(frozen=True)
class EditJudging:
    """What every edit measurement shares: the judge, the attributes edited, how many faces, and per attribute the
    classifier columns unrelated to it (`unrelated_columns`)."""

    classifier: AttributeClassifier
    attributes: Sequence[str]
    max_faces: int
    unrelated: Mapping[str, list[int]]
    upper_lip: AttributeClassifier | None = None  # the moustache's own judge (`UPPER_LIP`), where there is one


def edits(subject: Subject, model: FaceModel, judging: EditJudging, per_column: bool = False) -> dict[str, Any]:
    """Edit success, side effects and identity drift per attribute, direction and strength, with `model`'s vectors;
    with `per_column`, also the share of faces whose verdict changed per classifier column, for the edit
    (`changed`) and the random move (`random_changed`)."""
    classifier, attributes, max_faces, unrelated = (
        judging.classifier,
        judging.attributes,
        judging.max_faces,
        judging.unrelated,
    )
    data = subject.data
    assert data.labels is not None
    rows, skipped = [], {}
    for name in attributes:
        if name not in model.bundle.attributes:
            skipped[name] = "the bundle has no vector for it (see attributes_left_out in its manifest)"
            continue
        if name not in classifier.attributes or name not in data.dataset.attribute_names:
            skipped[name] = "not a labelled attribute of the data or the classifier"
            continue
        target = classifier.column(name)
        column = data.dataset.attribute_names.index(name)
        for direction, sign in (("add", 1.0), ("remove", -1.0)):
            # add: faces labelled without it; remove: faces labelled with it.
            rows_of = np.flatnonzero(data.labels[data.val, column] == -sign)[:max_faces]
            if len(rows_of) == 0:
                continue
            z = subject.z_val[rows_of]
            occurs = where_it_occurs(
                data.labels[data.train],
                data.labels[data.val[rows_of]],
                data.dataset.attribute_names,
                name,
                EditConfig().calibration_min_examples,
            )
            unedited = Judged.of(classifier, batched(model.decode, z))
            photo_verdicts, _ = judge(classifier, data.images[data.val[rows_of]])
            others = [np.roll(layer, 1, axis=0) for layer in unedited.looks]  # each face against another person's
            different_people = float(perceptual_distances(unedited.looks, others)[0].mean()) if len(z) > 1 else None
            row: dict[str, Any] = {
                "attribute": name,
                "direction": direction,
                "faces": len(rows_of),
                "unrelated": len(unrelated[name]),
                "real": float(np.mean(photo_verdicts[:, target] == (sign > 0))),
                "unedited": float(np.mean(unedited.verdicts[:, target] == (sign > 0))),
                "different_people": different_people,
                "strengths": {},
            }
            for strength in STRENGTHS:
                effect = edit_effect(
                    model,
                    classifier,
                    z,
                    unedited,
                    {name: sign * strength},
                    target,
                    sign > 0,
                    unrelated[name],
                    occurs=occurs,
                )
                for key in ("changed", "random_changed"):
                    values = effect.pop(key)
                    if per_column:
                        effect[key] = [round(float(v), 4) for v in values]
                row["strengths"][f"{sign * strength:+g}"] = effect
            rows.append(row)
    return {"strengths": list(STRENGTHS), "max_faces": max_faces, "rows": rows, "skipped": skipped}


def conditional_edits(subject: Subject, model: FaceModel, judging: EditJudging) -> list[dict[str, Any]]:
    """CONDITIONAL_EDITS with and without `keep`: success, how often the kept verdict flips, side effects; for a
    moustache, with the upper-lip judge as well (`upper_lip`: share of the edited faces, of the unedited ones and of
    a random move as long judged to have one)."""
    classifier, max_faces, unrelated = judging.classifier, judging.max_faces, judging.unrelated
    data = subject.data
    assert data.labels is not None
    names = data.dataset.attribute_names
    rows = []
    for name, strength, kept, kept_label in CONDITIONAL_EDITS:
        if name not in model.bundle.attributes or kept not in model.bundle.attributes:
            continue
        lacks = data.labels[data.val, names.index(name)] < 0
        chosen = np.flatnonzero(lacks & (data.labels[data.val, names.index(kept)] == kept_label))[:max_faces]
        if len(chosen) == 0:
            continue
        z = subject.z_val[chosen]
        unedited = Judged.of(classifier, batched(model.decode, z))
        for keep in ((), (kept,)):
            effect = edit_effect(
                model,
                classifier,
                z,
                unedited,
                {name: strength},
                classifier.column(name),
                True,
                unrelated[name],
                keep,
                upper_lip=judging.upper_lip if judging.upper_lip and name in judging.upper_lip.attributes else None,
            )
            row = {
                "edit": f"{name} {strength:+g}",
                "faces": f"{'without' if kept_label < 0 else 'with'} {kept}",
                "count": len(chosen),
                "keep": list(keep),
                "success": effect["success"],
                "kept_changed": float(effect["changed"][classifier.column(kept)]),
                "side_effects": effect["side_effects"],
                "side_ratio": effect["side_ratio"],
                "drift": effect["drift"],
            }
            if "upper_lip" in effect:
                row["upper_lip"] = effect["upper_lip"]
            rows.append(row)
    return rows


def directions(subject: Subject, judging: EditJudging) -> dict[str, Any]:
    """Every direction method's vectors, rebuilt from this bundle's encoded training split, judged as the edits."""
    data = subject.data
    assert data.labels is not None
    names = data.dataset.attribute_names
    result: dict[str, Any] = {}
    for method in DIRECTION_METHODS:
        vectors, left_out = attribute_vectors(
            names,
            subject.z_train,
            data.labels[data.train],
            subject.z_val,
            data.labels[data.val],
            subject.min_positives,
            method=method,
        )
        variant = with_vectors(subject.model, vectors)
        result[method] = {
            "edits": edits(subject, variant, judging),
            "conditional": conditional_edits(subject, variant, judging),
            "left_out": left_out,
        }
        print(f"  {subject.label}: directions {method} done")
    return result


def quality_table(section: Mapping[str, Any]) -> dict[str, Any]:
    """The quality table's figures of one bundle, from its sections."""
    rec, samp, ed = section["reconstruction"], section["sampling"], section["edits"]
    fd = {row["setting"]: row["fd_mean"] for row in samp["rows"]}
    adds = {r["attribute"]: r["strengths"].get("+2") for r in ed["rows"] if r["direction"] == "add"}
    side = [v["side_effects"] for v in adds.values() if v and v["side_effects"] is not None]
    floor = [v["random_side_effects"] for v in adds.values() if v and v.get("random_side_effects") is not None]
    kept = [r for r in section.get("conditional", []) if r["keep"]]
    return {
        "reconstruction_sharpness": rec["sharpness"],
        "sample_sharpness": samp["sharpness"].get(samp["default_mode"]),
        "sample_sharpness_by_mode": samp["sharpness"],
        "male_kept": rec["male_kept"],
        "all_kept": rec["all_kept"],
        "default_mode": samp["default_mode"],
        "fd_t1": {mode: fd.get(f"{mode} 1") for mode in samp["modes"]},
        "success_plus2": {name: v["success"] if v else None for name, v in adds.items()},
        "success_plus2_where_it_occurs": {
            name: v.get("success_where_it_occurs") if v else None for name, v in adds.items()
        },
        "side_effects_plus2": [min(side), max(side)] if side else None,
        "random_side_effects_plus2": [min(floor), max(floor)] if floor else None,
        "side_ratio_plus2": {name: v.get("side_ratio") if v else None for name, v in adds.items()},
        "person_plus2": {name: v.get("person") if v else None for name, v in adds.items()},
        "person_perceptual_plus2": {name: v.get("person_perceptual") if v else None for name, v in adds.items()},
        "person_inner_face_plus2": {name: v.get("person_inner_face") if v else None for name, v in adds.items()},
        "conditional_kept": [kept[0]["success"], 1 - kept[0]["kept_changed"]] if kept else None,
        "conditional_upper_lip": kept[0].get("upper_lip") if kept else None,
        "drift_plus2": float(np.mean([v["drift"] for v in adds.values() if v])) if adds else None,
        "red_patch_plus2": {name: v.get("red_patch") if v else None for name, v in adds.items()},
        "random_red_patch_plus2": {name: v.get("random_red_patch") if v else None for name, v in adds.items()},
        "mse": rec["mse"],
    }


# ---- report -------------------------------------------------------------------------------------------------------


def pct(value: float | None, digits: int = 0) -> str | None:
    return None if value is None else f"{100 * value:.{digits}f} %"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def span(pair: Sequence[float] | None) -> str | None:
    """A min-max pair as '0.123-0.456'."""
    return None if pair is None else "{:.3f}-{:.3f}".format(*pair)


def side_by_side(report: dict[str, Any]) -> Table:
    labels = [section["label"] for section in report["bundles"]]
    summaries = [section["quality"] for section in report["bundles"]]
    attributes = list(TARGETS["success"])
    modes = report["bundles"][0]["sampling"]["modes"]
    rows: list[list[object]] = [
        ["reconstruction sharpness (vs photos)", *(fmt(i["reconstruction_sharpness"], 2) for i in summaries), "≥ 0.30"],
        [
            "sample sharpness, default mode",
            *(f"{fmt(i['sample_sharpness'], 2)} ({i['default_mode']})" for i in summaries),
            "≥ 0.25",
        ],
        *(
            [f"sample sharpness, {mode}", *(fmt(i["sample_sharpness_by_mode"].get(mode), 2) for i in summaries), None]
            for mode in modes
        ),
        ["reconstruction keeps the Male verdict", *(pct(i["male_kept"], 1) for i in summaries), "≥ 95 %"],
        ["reconstruction keeps all 40 verdicts", *(fmt(100 * i["all_kept"], 1) + " %" for i in summaries), "≥ 93 %"],
        *([f"FD at T = 1, {mode}", *(fmt(i["fd_t1"].get(mode), 1) for i in summaries), None] for mode in modes),
        [
            "FD at T = 1, default mode / prior",
            *(fmt(ratio(i["fd_t1"].get(i["default_mode"]), i["fd_t1"].get("prior")), 2) for i in summaries),
            "≤ 1",
        ],
        [
            "/edit +2 success, " + " / ".join(attributes),
            *(" / ".join(fmt(i["success_plus2"].get(a), 2) or "-" for a in attributes) for i in summaries),
            "≥ " + " / ".join(f"{TARGETS['success'][a]:g}" for a in attributes),
        ],
        [
            "the same, on the sexes in which the attribute occurs (men for Mustache)",
            *(
                " / ".join(fmt(i.get("success_plus2_where_it_occurs", {}).get(a), 2) or "-" for a in attributes)
                for i in summaries
            ),
            None,
        ],
        [
            "side effects at +2 (min-max over the five)",
            *(span(i["side_effects_plus2"]) for i in summaries),
            None,
        ],
        [
            "the same for a random move as long as each +2 edit (the judge's floor)",
            *(span(i.get("random_side_effects_plus2")) for i in summaries),
            None,
        ],
        [
            "side effects ÷ random move at +2, " + " / ".join(attributes),
            *(" / ".join(fmt(i.get("side_ratio_plus2", {}).get(a), 2) or "-" for a in attributes) for i in summaries),
            f"≤ {TARGETS['side_ratio']:g} each",
        ],
        [
            "person kept at +2: perceptual distance ÷ random move, whole picture, " + " / ".join(attributes),
            *(
                " / ".join(fmt(i.get("person_perceptual_plus2", {}).get(a), 2) or "-" for a in attributes)
                for i in summaries
            ),
            f"≤ {TARGETS['person_perceptual']:g} each",
        ],
        [
            "the same over the inner face, " + " / ".join(attributes),
            *(
                " / ".join(fmt(i.get("person_inner_face_plus2", {}).get(a), 2) or "-" for a in attributes)
                for i in summaries
            ),
            None,
        ],
        [
            "the same in the judge's penultimate features (they read attributes), " + " / ".join(attributes),
            *(" / ".join(fmt(i.get("person_plus2", {}).get(a), 2) or "-" for a in attributes) for i in summaries),
            None,
        ],
        [
            "Mustache +2, keep Male, on women: moustache shown / still judged female",
            *(
                " / ".join(pct(v) or "-" for v in i["conditional_kept"]) if i.get("conditional_kept") else None
                for i in summaries
            ),
            " / ".join(f"≥ {100 * t:.0f} %" for t in TARGETS["conditional"]),
        ],
        [
            "the same, moustache shown to the upper-lip judge (unedited faces; a random move as long)",
            *(
                "{} ({}; {})".format(*(pct(shown[key]) for key in ("edited", "unedited", "random_move")))
                if (shown := i.get("conditional_upper_lip"))
                else None
                for i in summaries
            ),
            f"≥ {100 * TARGETS['conditional'][0]:.0f} %",
        ],
        ["identity drift at +2 (mean abs. Δpixel, 0-255)", *(fmt(i["drift_plus2"], 1) for i in summaries), None],
        *(
            [label, *(" / ".join(fmt(i.get(key, {}).get(a), 3) or "-" for a in attributes) for i in summaries), None]
            for label, key in (
                (
                    "red painted at +2: Cr gain of the inner face's reddest patch (0-1), " + " / ".join(attributes),
                    "red_patch_plus2",
                ),
                ("the same for the random move as long", "random_red_patch_plus2"),
            )
        ),
        ["validation reconstruction MSE", *(fmt(i["mse"], 5) for i in summaries), "≤ 0.0105"],
    ]
    return Table(
        "Quality: what a user gets, side by side (judge at p ≥ 0.5)",
        ["measure", *labels, "target"],
        rows,
        "Sharpness: mean per-face variance of the 3x3 Laplacian (grey) over the same mean on the real validation "
        "faces. Side effects: mean |Δverdict| over attributes unrelated to the edited one (|phi| < 0.2 on the "
        "training labels). All on the validation split; see the sections below for every detail.",
    )


def edit_tables(label: str, section: Mapping[str, Any], title: str) -> list[Table]:
    result = []
    for direction, sign in (("add", "+"), ("remove", "-")):
        rows = [r for r in section["rows"] if r["direction"] == direction]
        if not rows:
            continue
        keys = [f"{sign}{s:g}" for s in section["strengths"]]
        result.append(
            Table(
                f"{label}: {title}, {direction}: success / side effects ÷ random move / person kept, perceptual "
                "and in the judge's features (÷ random move)",
                ["attribute", "faces", "real photo", "unedited", *keys],
                [
                    [r["attribute"], r["faces"], pct(r["real"]), pct(r["unedited"])]
                    + [
                        f"{success_cell(r['strengths'][k])} / {fmt(r['strengths'][k].get('side_ratio'), 2)} / "
                        f"{fmt(r['strengths'][k].get('person_perceptual'), 2)}, "
                        f"{fmt(r['strengths'][k].get('person'), 2)}"
                        for k in keys
                    ]
                    for r in rows
                ],
                "Faces: validation faces labelled " + ("without" if direction == "add" else "with") + " it; success "
                "= share judged " + ("to have it" if direction == "add" else "not to have it") + " (p ≥ 0.5), "
                "'real photo' and 'unedited' the same verdict on the photo and on its reconstruction. Side effects: "
                "unrelated verdicts changed, over those a random move as long as each face's edit changes; person "
                "kept: the perceptual distance (whole picture), then the distance in the judge's penultimate "
                "features, from the unedited face, over the random move's. In brackets, "
                "where it differs: the success on the faces of the sexes in which the attribute occurs in the "
                "training labels (men for Mustache).",
            )
        )
    return result


def success_cell(effect: Mapping[str, Any]) -> str | None:
    """The edit's success, and in brackets its success where the attribute occurs when that differs."""
    where = effect.get("success_where_it_occurs")
    if where is None or abs(where - effect["success"]) < 0.005:
        return pct(effect["success"])
    return f"{pct(effect['success'])} ({pct(where)})"


def tables(report: dict[str, Any]) -> list[Table]:
    classifier = report["classifier"]
    augmentation = classifier["augmentation"]
    result = [
        Table(
            "Attribute classifier (the judge): validation ROC AUC",
            ["attribute", "AUC"],
            [[name, fmt(auc, 3)] for name, auc in classifier["attributes"].items()]
            + [["mean of all 40", fmt(classifier["mean_all"], 3)]],
            f"CNN trained {classifier['epochs']} epochs on {classifier['train']} training faces with flips, a "
            f"Gaussian blur on {augmentation['blur_probability']:.0%} of them (sigma {augmentation['blur_sigma']} px) "
            f"and pixel noise (std {augmentation['noise_std']}), measured on {classifier['validation']} validation "
            "faces.",
        ),
        side_by_side(report),
    ]
    for section in report["bundles"]:
        label, samp = section["label"], section["sampling"]
        by_setting = {row["setting"]: row for row in samp["rows"]}

        def cell(key: str, by_setting: Mapping[str, Any] = by_setting) -> str | None:
            row = by_setting.get(key)
            return None if row is None else f"{row['fd_mean']:.3g} ± {row['fd_std']:.2g}"

        temperatures = samp["temperatures"]
        result.append(
            Table(
                f"{label}: Fréchet distance to real validation faces (classifier features; lower is better)",
                ["sampling", *(f"T = {t:g}" for t in temperatures)],
                [
                    [
                        mode + (" (default)" if mode == samp["default_mode"] else ""),
                        *(cell(f"{mode} {t:g}") for t in temperatures),
                    ]
                    for mode in samp["modes"]
                ]
                + [[f"anchor: {key}", cell(key)] for key in ("real training faces", "their reconstructions")],
                f"{samp['samples']} generated faces per setting ({samp['anchor_faces']} for the anchors) against "
                f"{samp['real_validation_faces']} validation faces; mean ± std over {samp['repeats']} seeds, the same "
                "noise for every mode.",
            )
        )
        result += edit_tables(label, section["edits"], "edits as served")
        if "edits_vectors" in section:
            result += edit_tables(label, section["edits_vectors"], "attribute vectors alone (no editor)")
        for method, found in section.get("directions", {}).items():
            result += edit_tables(label, found["edits"], f"direction method {method}")
        conditional = [
            [
                method,
                r["edit"],
                f"{r['faces']} ({r['count']})",
                ", ".join(r["keep"]) or "-",
                pct(r["success"]),
                pct(r["kept_changed"]),
                fmt(r["side_effects"], 3),
                fmt(r["drift"], 1),
            ]
            for method, found in section.get("directions", {}).items()
            for r in found["conditional"]
        ]
        if conditional:
            result.append(
                Table(
                    f"{label}: conditional edits (keep = the kept attribute's direction projected out)",
                    ["method", "edit", "faces", "keep", "success", "kept verdict changed", "side effects", "drift"],
                    conditional,
                )
            )
        if section["edits"]["skipped"]:
            result.append(
                Table(
                    f"{label}: attributes not measured", ["attribute", "why"], list(section["edits"]["skipped"].items())
                )
            )
    return result


def headline(report: dict[str, Any]) -> str:
    parts = []
    for section in report["bundles"]:
        i = section["quality"]
        success = ", ".join(f"{a} {fmt(v, 2)}" for a, v in i["success_plus2"].items())
        fd = ", ".join(f"{mode} {fmt(v, 1)}" for mode, v in i["fd_t1"].items())
        parts.append(
            f"{section['label']}: sharpness {fmt(i['reconstruction_sharpness'], 2)} (samples "
            f"{fmt(i['sample_sharpness'], 2)}), Male kept {pct(i['male_kept'], 1)}, FD at T=1 {fd} (default "
            f"{i['default_mode']}), +2 success {success}, MSE {fmt(i['mse'], 5)}"
        )
    return "; ".join(parts) + "."


# ---- figures ------------------------------------------------------------------------------------------------------


def picture_figures(subjects: Sequence[Subject], attributes: Sequence[str], seed: int, figures: Path) -> list[Path]:
    """Reconstructions of men and women (photo, then each bundle), samples per mode and edit strips per bundle."""
    paths = []
    first = subjects[0].data
    assert first.labels is not None
    male = first.labels[first.val, first.dataset.attribute_names.index("Male")] > 0
    rows, labels = [], []
    for who, chosen in (("men", np.flatnonzero(male)[:SHOWN_FACES]), ("women", np.flatnonzero(~male)[:SHOWN_FACES])):
        rows.append(first.images[first.val[chosen]])
        labels.append(f"photo ({who})")
        for subject in subjects:
            rows.append(subject.model.decode(subject.z_val[chosen]))
            labels.append(subject.label)
    paths.append(figures / "quality_reconstructions.png")
    grid(rows, labels).save(paths[-1])

    for subject in subjects:
        model = subject.model
        shown = [
            model.decode(model.sample_latents(SAMPLE_GRID, np.random.default_rng(seed), m, 1.0)) for m in SamplingMode
        ]
        default = str(model.bundle.latent_stats.default_mode)
        names = [f"{m.value} T=1" + (" (default)" if m.value == default else "") for m in SamplingMode]
        paths.append(figures / f"quality_samples_{subject.slug}.png")
        grid(shown, names).save(paths[-1])

        data = subject.data
        assert data.labels is not None
        strips, names = [], []
        for skip, name in enumerate(attributes):
            if name not in model.bundle.attributes:
                continue
            lacks = np.flatnonzero(data.labels[data.val, data.dataset.attribute_names.index(name)] < 0)
            row = lacks[skip % len(lacks)]
            strip = model.decode(model.edit(subject.z_val[row], {name: 3.0}, steps=7))
            strips.append(np.concatenate([data.images[data.val[row]][np.newaxis], strip]))
            names.append(name)
        if strips:
            paths.append(figures / f"quality_edits_{subject.slug}.png")
            grid(strips, [f"{name} -3..+3" for name in names]).save(paths[-1])
        paths.append(edit_against_random_figure(subject, attributes, seed, figures))
    return paths


def edit_against_random_figure(subject: Subject, attributes: Sequence[str], seed: int, figures: Path) -> Path:
    """Per attribute, SHOWN_EDITED_FACES validation faces without it: unedited, edited at +2, and moved as far in a
    random direction (`random_moves`, the floor every side-effect and person-kept ratio divides by)."""
    model, data = subject.model, subject.data
    assert data.labels is not None
    rows, labels = [], []
    for name in attributes:
        if name not in model.bundle.attributes:
            continue
        lacks = np.flatnonzero(data.labels[data.val, data.dataset.attribute_names.index(name)] < 0)
        z = subject.z_val[lacks[:SHOWN_EDITED_FACES]]
        edited = model.edit_codes(z, {name: 2.0})
        moved = z + random_moves(model, np.linalg.norm(edited - z, axis=1), seed)
        rows += [model.decode(z), model.decode(edited), model.decode(moved)]
        labels += [f"{name}: unedited", f"{name} +2", "random move as long"]
    path = figures / f"quality_edit_vs_random_{subject.slug}.png"
    grid(rows, labels).save(path)
    return path


def chart_figures(report: dict[str, Any], figures: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []

    def save(fig: Any, file: str) -> None:
        fig.tight_layout()
        paths.append(figures / file)
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    auc = report["classifier"]["all"]
    names = [n for n in auc if auc[n] is not None]
    fig, ax = plt.subplots(figsize=(6, 9))
    colors = ["C3" if n in report["classifier"]["attributes"] else "C0" for n in names]
    ax.barh(names, [auc[n] for n in names], color=colors)
    ax.axvline(0.5, color="grey", linestyle=":")
    ax.set_xlim(0.4, 1.0)
    ax.invert_yaxis()
    ax.set_xlabel("validation ROC AUC (red: attributes edited)")
    ax.set_title("attribute classifier (blur/noise augmented)", fontsize=10)
    save(fig, "quality_classifier_auc.png")

    sections = report["bundles"]
    labels = [s["label"] for s in sections]
    summaries = [s["quality"] for s in sections]
    panels: list[tuple[str, list[float | None], float | None]] = [
        (
            "reconstruction sharpness",
            [i["reconstruction_sharpness"] for i in summaries],
            TARGETS["reconstruction_sharpness"],
        ),
        ("sample sharpness (default)", [i["sample_sharpness"] for i in summaries], TARGETS["sample_sharpness"]),
        ("Male kept", [i["male_kept"] for i in summaries], TARGETS["male_kept"]),
        ("all 40 kept", [i["all_kept"] for i in summaries], TARGETS["all_kept"]),
        ("validation MSE", [i["mse"] for i in summaries], TARGETS["mse"]),
        (
            "side effects ÷ random move at +2 (max)",
            [max((v for v in i["side_ratio_plus2"].values() if v is not None), default=None) for i in summaries],
            TARGETS["side_ratio"],
        ),
    ]
    modes = sections[0]["sampling"]["modes"]
    attributes = list(TARGETS["success"])
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    flat = axes.ravel()
    for ax, (title, values, target) in zip(flat, panels, strict=False):
        ax.bar(labels, [np.nan if v is None else v for v in values], color=[f"C{k}" for k in range(len(labels))])
        if target is not None:
            ax.axhline(target, color="k", linestyle="--", linewidth=1, label="target")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=7, rotation=15)
    width = 0.8 / len(labels)
    ax = flat[len(panels)]
    for k, i in enumerate(summaries):
        ax.bar(np.arange(len(modes)) + k * width, [i["fd_t1"].get(m) or np.nan for m in modes], width, label=labels[k])
    ax.set_xticks(np.arange(len(modes)) + width * (len(labels) - 1) / 2, modes)
    ax.set_title("FD at T = 1 (lower is better)", fontsize=10)
    ax.legend(fontsize=7)
    ax = flat[len(panels) + 1]
    for k, i in enumerate(summaries):
        values = [i["success_plus2"].get(a) for a in attributes]
        ax.bar(
            np.arange(len(attributes)) + k * width, [np.nan if v is None else v for v in values], width, label=labels[k]
        )
    ax.scatter(
        np.arange(len(attributes)) + width * (len(labels) - 1) / 2,
        [TARGETS["success"][a] for a in attributes],
        color="k",
        marker="_",
        s=300,
        label="target",
        zorder=3,
    )
    ax.set_xticks(np.arange(len(attributes)) + width * (len(labels) - 1) / 2, attributes, fontsize=7)
    ax.set_title("/edit +2 success", fontsize=10)
    ax.legend(fontsize=7)
    save(fig, "quality_comparison.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for k, section in enumerate(sections):
        by_setting = {row["setting"]: row for row in section["sampling"]["rows"]}
        temperatures = section["sampling"]["temperatures"]
        for m, mode in enumerate(section["sampling"]["modes"]):
            rows = [by_setting[f"{mode} {t:g}"] for t in temperatures]
            ax.errorbar(
                temperatures,
                [r["fd_mean"] for r in rows],
                [r["fd_std"] for r in rows],
                marker="o",
                linestyle=["-", "--", ":"][m % 3],
                color=f"C{k}",
                label=f"{section['label']} {mode}",
            )
    ax.set_xlabel("temperature")
    ax.set_ylabel("Fréchet distance to validation faces")
    ax.set_title("sampling modes (lower is better)", fontsize=10)
    ax.legend(fontsize=7)
    save(fig, "quality_fd.png")

    for section in sections:
        found = section.get("directions")
        if not found:
            continue
        methods = list(found)
        fig, (success_ax, side_ax, drift_ax) = plt.subplots(1, 3, figsize=(15, 4))
        width = 0.8 / len(methods)
        for k, method in enumerate(methods):
            adds = {
                r["attribute"]: r["strengths"]["+2"] for r in found[method]["edits"]["rows"] if r["direction"] == "add"
            }
            x = np.arange(len(attributes)) + k * width
            for ax, key in ((success_ax, "success"), (side_ax, "side_effects"), (drift_ax, "drift")):
                values = [adds[a][key] if a in adds and adds[a][key] is not None else np.nan for a in attributes]
                ax.bar(x, values, width, label=method)
        for ax, title in (
            (success_ax, "success at +2"),
            (side_ax, "side effects at +2"),
            (drift_ax, "identity drift at +2"),
        ):
            ax.set_xticks(np.arange(len(attributes)) + width * (len(methods) - 1) / 2, attributes, fontsize=8)
            ax.set_title(f"{section['label']}: {title}", fontsize=10)
        success_ax.legend(fontsize=7)
        save(fig, f"quality_directions_{section['slug']}.png")
    return paths


# ---- main ---------------------------------------------------------------------------------------------------------


def load_classifier(args: argparse.Namespace, config: TrainConfig) -> AttributeClassifier:
    """The judge, trained first when asked to; it must frame and split faces exactly as the bundles' VAEs did."""
    folder = args.classifier or default_out(config.image_size)
    if not (folder / "classifier.json").is_file():
        if not args.train_classifier:
            raise SystemExit(
                f"no classifier in {folder}: pass --train-classifier, or train one with\n"
                f"  python -m training.classifier --data {args.data} --image-size {config.image_size} "
                f"--val-fraction {config.val_fraction} --epochs {JUDGE_EPOCHS} --out {folder}"
            )
        settings = ClassifierConfig.framing_like(
            config, args.classifier_max_images, epochs=args.classifier_epochs or JUDGE_EPOCHS
        )
        return train_classifier(settings, args.data, folder, args.cache_dir)
    return AttributeClassifier.load(folder)


def find_upper_lip_judge(folder: Path | None, image_size: int) -> AttributeClassifier | None:
    """The moustache's upper-lip judge (`UPPER_LIP`) in `folder` (default runs/classifier-<image size>-upper-lip),
    or None where there is none."""
    folder = folder or default_out(image_size, upper_lip=True)
    return AttributeClassifier.load(folder) if (folder / CONFIG_FILE).is_file() else None


def load_upper_lip_judge(args: argparse.Namespace, config: TrainConfig) -> AttributeClassifier | None:
    """The upper-lip judge (`find_upper_lip_judge`), trained first with --train-classifier; None where there is none
    (the upper-lip figures are left out)."""
    folder = args.upper_lip_judge or default_out(config.image_size, upper_lip=True)
    found = find_upper_lip_judge(folder, config.image_size)
    if found is not None:
        return found
    if args.train_classifier:
        settings = ClassifierConfig.framing_like(config, args.classifier_max_images, **UPPER_LIP)
        return train_classifier(settings, args.data, folder, args.cache_dir)
    print(
        f"no upper-lip judge in {folder}; its figures are left out (train it with: python -m training.classifier "
        f"--data {args.data} --image-size {config.image_size} --upper-lip --out {folder})"
    )
    return None


def check_classifier(classifier: AttributeClassifier, config: TrainConfig, label: str) -> None:
    judged = classifier.config
    ours, theirs = (
        (config.image_size, tuple(config.crop), config.val_fraction),
        (
            judged.image_size,
            tuple(judged.crop),
            judged.val_fraction,
        ),
    )
    if ours != theirs:
        raise SystemExit(
            f"the classifier frames or splits faces differently from {label} (image size, crop, validation "
            f"fraction {theirs} vs {ours}); train a matching one with another --classifier folder"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        help=f"bundle folder; repeat for several (default: {DEFAULT_MODEL}, unless --old-bundle-rev is given alone)",
    )
    parser.add_argument("--old-bundle-rev", action="append", default=[], help="git revision of a format-1 bundle")
    parser.add_argument("--old-bundle-path", default=OLD_BUNDLE_PATH, help="its folder in git (default: %(default)s)")
    parser.add_argument("--classifier", type=Path, help="classifier folder (default: runs/classifier-<image size>)")
    parser.add_argument(
        "--upper-lip-judge", type=Path, help="the moustache's judge (default: runs/classifier-<image size>-upper-lip)"
    )
    parser.add_argument(
        "--train-classifier", action="store_true", help="train the classifier (and the upper-lip judge) if missing"
    )
    parser.add_argument("--classifier-epochs", type=int, help=f"epochs when training it (default: {JUDGE_EPOCHS})")
    parser.add_argument("--classifier-max-images", type=int, help="images when training it (default: all)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CelebA-layout folder (default: %(default)s)")
    parser.add_argument("--max-images", type=int, help="use only the first N images (smoke runs; default: all)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="decoded-face cache (as training's)")
    parser.add_argument("--samples", type=int, default=1000, help="generated faces per FD setting (default: 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="seeds per FD setting (default: 3)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    parser.add_argument("--attributes", nargs="+", default=list(EDIT_ATTRIBUTES), help="attributes to edit")
    parser.add_argument("--edit-faces", type=int, default=300, help="most faces per attribute and direction")
    parser.add_argument("--skip-directions", action="store_true", help="no direction-method comparison")
    parser.add_argument(
        "--refine-steps",
        type=int,
        nargs="+",
        default=[REFINE_STEPS],
        help="refinement steps of the validation faces' codes, as the service's FACEVAE_REFINE_STEPS; several "
        "measure each bundle at each, side by side, and any but the service's default is added to the label "
        "(default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "quality.json", help="JSON (default: %(default)s)")
    parser.add_argument("--figures", type=Path, default=FIGURES_DIR, help="PNG folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.model is None:
        args.model = [] if args.old_bundle_rev else [Path(DEFAULT_MODEL)]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    limits = {"batch": max(args.samples, BATCH, SAMPLE_GRID), "strength": max(STRENGTHS)}
    prepared: dict[tuple[Any, ...], PreparedData] = {}
    configs: list[tuple[str, TrainConfig]] = []

    def data_for(training: Mapping[str, Any]) -> PreparedData:
        config = data_config(training, args.max_images)
        configs.append((training.get("name", "bundle"), config))
        key = (config.image_size, tuple(config.crop), config.val_fraction, config.max_images)
        if key not in prepared:
            prepared[key] = prepare_data(config, args.data, args.cache_dir, skip_bad=False)
            if prepared[key].labels is None:
                raise SystemExit(f"{args.data} has no attribute labels; the evaluation needs them")
        return prepared[key]

    subjects: list[Subject] = []
    with tempfile.TemporaryDirectory(prefix="old-bundle-") as temp:
        for rev in args.old_bundle_rev:
            folder = extract_old_bundle(rev, args.old_bundle_path, Path(temp) / rev)
            name = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))["name"]
            subjects.append(open_old_bundle(folder, f"{name}@{rev}", data_for, limits))
        for path in args.model:
            for steps in args.refine_steps:
                subject = open_bundle(path, "", data_for, limits, steps)
                taken = {s.label for s in subjects}
                subject.label = subject.model.bundle.name if subject.model.bundle.name not in taken else str(path)
                if steps != REFINE_STEPS:
                    subject.label += f" (refine {steps})"
                subjects.append(subject)
        if not subjects:
            raise SystemExit("nothing to measure: pass --model and/or --old-bundle-rev")

        classifier = load_classifier(args, configs[0][1])
        upper_lip = load_upper_lip_judge(args, configs[0][1])
        for label, config in configs:
            for judge_ in (classifier, upper_lip):
                if judge_ is not None:
                    check_classifier(judge_, config, label)
        report: dict[str, Any] = {
            "machine": machine(),
            "classifier": classifier_section(classifier, args.attributes),
            "upper_lip_judge": upper_lip_section(upper_lip, subjects[0].data) if upper_lip is not None else None,
            "refine_steps": args.refine_steps,
            "threshold": THRESHOLD,
            "unrelated_phi": UNRELATED_PHI,
            "targets": TARGETS,
            "bundles": [],
        }
        reals: dict[int, Real] = {}
        for subject in subjects:
            print(f"{subject.label}: {len(subject.data.val)} validation faces")
            if id(subject.data) not in reals:
                faces = subject.data.images[subject.data.val]
                verdicts, features = judge(classifier, faces)
                reals[id(subject.data)] = Real(verdicts, features, float(sharpness(faces).mean()))
            real = reals[id(subject.data)]
            unrelated = unrelated_columns(subject, classifier)
            stats = subject.model.bundle.latent_stats
            section: dict[str, Any] = {
                "label": subject.label,
                "slug": subject.slug,
                "source": subject.source,
                "name": subject.model.bundle.name,
                "image_size": subject.model.image_size,
                "z_dim": subject.model.z_dim,
                "validation_faces": len(subject.data.val),
                "default_mode": str(stats.default_mode),
                "std_scalar": stats.std_scalar,
                "vector_methods": sorted({str(v.method) for v in subject.model.bundle.attributes.values()}),
            }
            print("  reconstruction")
            section["reconstruction"] = reconstruction(subject, classifier, real)
            print("  sampling")
            section["sampling"] = sampling(
                subject, classifier, real, args.samples, args.repeats, args.temperatures, args.seed
            )
            print("  edits")
            judging = EditJudging(classifier, args.attributes, args.edit_faces, unrelated, upper_lip)
            section["edits"] = edits(subject, subject.model, judging)
            section["conditional"] = conditional_edits(subject, subject.model, judging)
            if subject.model.editor is not None:
                section["edits_vectors"] = edits(subject, subject.model.without_editor(), judging)
            if not args.skip_directions:
                section["directions"] = directions(subject, judging)
            section["quality"] = quality_table(section)
            report["bundles"].append(section)
        report["headline"] = headline(report)
        args.figures.mkdir(parents=True, exist_ok=True)
        figures = picture_figures(subjects, args.attributes, args.seed, args.figures)
        report["figures"] = [str(path) for path in [*figures, *chart_figures(report, args.figures)]]
    write_report(args.out, report, tables(report), report["headline"])


if __name__ == "__main__":
    main()
