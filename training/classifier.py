"""A small CNN that predicts CelebA's 40 attributes: the evaluator of bench/bench_quality.py.

It learns from the VAE's training split only (the same file-name hash split, `training.data.split`), so the
validation faces the benchmark judges are new to both models. Its penultimate layer, `features`, is the
embedding the benchmark's Fréchet distance is measured in: a face-specific stand-in for Inception features.

    python -m training.classifier --data ../shared/data/celeba_subset --image-size 64 --epochs 6

writes `runs/classifier-64/` (`classifier.weights.h5` + `classifier.json`: settings, attribute names, per-attribute
validation AUC). Weights (HDF5) and JSON only, no Python object serialisation: `AttributeClassifier.load`
rebuilds the network from the JSON. With `--upper-lip` it trains the moustache's own judge instead (`UPPER_LIP`: a
`region` of the face, learnt `among` men) into `runs/classifier-64-upper-lip/`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from keras import layers, ops
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sklearn.metrics import roc_auc_score

from training.config import Region, TrainConfig
from training.data import CELEBA_CROP
from training.prepared import DEFAULT_CACHE, PreparedData, prepare_data

log = logging.getLogger(__name__)

CONFIG_FILE = "classifier.json"
WEIGHTS_FILE = "classifier.weights.h5"
FEATURES_LAYER = "features"
PREDICT_BATCH = 256
REPO_ROOT = Path(__file__).resolve().parents[1]


#: The whole picture, rows then columns as fractions of its height and width.
WHOLE_PICTURE = ((0.0, 1.0), (0.0, 1.0))
#: The aligned faces' inner face, rows then columns as fractions of the picture: brows to chin, cheek to cheek.
INNER_FACE = ((0.25, 0.875), (0.25, 0.75))


class ClassifierConfig(BaseModel):
    """What the classifier sees (framing, split) and how it is built and trained."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(64, gt=0, description="side of the square input; must match the bundle it judges")
    crop: tuple[float, float, float, float] = Field(CELEBA_CROP, description="face box, as in TrainConfig")
    val_fraction: float = Field(0.05, gt=0, lt=1, description="must match the VAE's, so both hold out the same faces")
    max_images: int | None = Field(None, gt=0, description="use only the first N images (sorted by file name)")
    filters: tuple[int, ...] = Field((32, 64, 128, 256), description="one stride-2 conv block each")
    features: int = Field(256, gt=0, description="width of the penultimate (feature) layer")
    dropout: float = Field(0.3, ge=0, lt=1, description="before the output layer")
    blur_probability: float = Field(
        0.5, ge=0, le=1, description="training only: share of faces blurred, so VAE output is judged on content"
    )
    blur_sigma: tuple[float, float] = Field(
        (0.2, 1.75), description="training only: range of the Gaussian blur's sigma in pixels (drawn per batch)"
    )
    blur_kernel: int = Field(9, gt=0, description="side of the blur kernel; odd, about 5 sigma wide")
    balanced: bool = Field(
        True, description="weight each attribute's two classes equally, so p >= 0.5 is a fair verdict on rare ones"
    )
    noise_std: float = Field(0.03, ge=0, description="training only: Gaussian pixel noise std on the [0, 1] scale")
    epochs: int = Field(6, gt=0)
    batch_size: int = Field(64, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    region: Region = Field(WHOLE_PICTURE, description="the part of the face it sees: rows, then columns, as fractions")
    among: str | None = Field(None, description="learn only from the faces labelled with this attribute")
    attributes: tuple[str, ...] = Field((), description="the attributes it predicts (default: every label)")
    seed: int = 0

    @field_validator("blur_kernel")
    @classmethod
    def _odd_kernel(cls, kernel: int) -> int:
        if kernel % 2 == 0:
            raise ValueError("blur_kernel must be odd")
        return kernel

    @field_validator("blur_sigma")
    @classmethod
    def _sigma_range(cls, sigma: tuple[float, float]) -> tuple[float, float]:
        if not 0 < sigma[0] <= sigma[1]:
            raise ValueError("blur_sigma must be (min, max) with 0 < min <= max")
        return sigma

    @classmethod
    def framing_like(cls, training: TrainConfig, max_images: int | None = None, **settings: Any) -> ClassifierConfig:
        """A classifier that frames and splits faces exactly as `training` did (so both hold out the same faces)."""
        framing = {"image_size": training.image_size, "crop": training.crop, "val_fraction": training.val_fraction}
        return cls(**framing, max_images=max_images, **settings)

    def data_config(self) -> TrainConfig:
        """The TrainConfig whose `prepare_data` gives this classifier's faces and split."""
        return TrainConfig(
            image_size=self.image_size, crop=self.crop, val_fraction=self.val_fraction, max_images=self.max_images
        )


#: The moustache's own judge (docs/benchmarks.md, "Mustache on women"): Mustache from the upper lip alone, learnt
#: among men only. None of CelebA's women has a moustache, so a whole-face classifier calls one only on a face that
#: turns male; this one sees no more of the face than where a moustache grows and learnt from faces that can have
#: one, so it cannot read the sex, and a moustache drawn on a woman is judged as one.
UPPER_LIP: dict[str, Any] = {
    "region": ((0.6, 0.8), (0.27, 0.72)),
    "among": "Male",
    "attributes": ("Mustache",),
    "filters": (32, 64, 128),
    "features": 64,
    "epochs": 12,
}


def build_classifier(config: ClassifierConfig, attributes: int) -> keras.Model:
    """Pixels (0-255) -> [the `region` cropped] -> stride-2 Conv + BatchNorm + ReLU blocks -> global average ->
    `features` -> sigmoids.

    Stride-2 convolutions (no pooling) and a global average keep it at a few million multiply-adds per face,
    which is what lets it train in minutes on two CPU cores. Augmentation, active in training only: horizontal
    flips (none of the 40 attributes depends on left and right), a Gaussian blur on `blur_probability` of the
    faces and pixel noise. The judge must see soft faces in training, or it learns "sharp" as a cue (e.g. for
    Eyeglasses or Mustache) and calls a blurry VAE face's glasses or moustache absent because of the blur.
    Keras draws the blur's sigma once per batch (x and y apart); over thousands of batches that covers the range.
    """
    pixels = keras.Input(shape=(config.image_size, config.image_size, 3), name="pixels")
    x = pixels
    if config.region != WHOLE_PICTURE:
        size = config.image_size
        x = layers.Cropping2D(tuple((round(start * size), round((1 - end) * size)) for start, end in config.region))(x)
    x = layers.Rescaling(1.0 / 255.0)(x)
    x = layers.RandomFlip("horizontal", seed=config.seed)(x)
    if config.blur_probability > 0:
        x = layers.RandomGaussianBlur(
            factor=(config.blur_probability, config.blur_probability),
            kernel_size=config.blur_kernel,
            sigma=config.blur_sigma,
            value_range=(0.0, 1.0),
            seed=config.seed,
        )(x)
    if config.noise_std > 0:
        x = layers.GaussianNoise(config.noise_std, seed=config.seed)(x)
    for width in config.filters:
        x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    features = layers.Dense(config.features, activation="relu", name=FEATURES_LAYER)(x)
    x = layers.Dropout(config.dropout, seed=config.seed)(features)
    probabilities = layers.Dense(attributes, activation="sigmoid", name="attributes")(x)
    return keras.Model(pixels, probabilities, name="attribute_classifier")


def relu_outputs(network: keras.Model, count: int) -> list[keras.KerasTensor]:
    """A face network's first `count` ReLU activations: the layers a perceptual loss or distance compares."""
    outputs = [layer.output for layer in network.layers if isinstance(layer, layers.ReLU)][:count]
    if len(outputs) < count:
        raise ValueError(f"{network.name} has {len(outputs)} ReLU layers, {count} were asked for")
    return outputs


#: The face network's layers a perceptual loss or distance compares: its first three ReLU activations (the VAE's
#: perceptual loss, the editor's perceptual keep and the benchmark's person-kept distance all use these).
PERCEPTUAL_LAYERS = 3


def perceptual_distance(ours: Sequence[Any], theirs: Sequence[Any], region: Region = WHOLE_PICTURE) -> Any:
    """Per pair of faces [N], LPIPS's distance without its learned weights (Zhang et al. 2018, the "baseline"
    variant) between two faces' ReLU activations (`relu_outputs`, each [N, h, w, channels]): each layer unit-normalised
    over channels at every position, squared differences summed over channels and averaged over the positions in
    `region` (rows, then columns, as fractions of the picture), summed over layers. Arrays or tensors in, a tensor
    out: the editor trains with it (`training.edits`), the benchmarks measure with it (`bench.bench_quality`)."""

    def unit(x: Any) -> Any:  # rsqrt of a floor, not x / norm: finite gradients where a position is all zeros
        return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-20))

    total = 0.0
    for a, b in zip(ours, theirs, strict=True):
        squared = ops.sum(ops.square(unit(ops.cast(a, "float32")) - unit(ops.cast(b, "float32"))), axis=-1)
        total = total + ops.mean(crop(squared, region), axis=(1, 2))
    return total


def crop(maps: Any, region: Region) -> Any:
    """Maps [N, h, w, ...] (an array or a tensor) cut to `region`: rows, then columns, as fractions of h and w."""
    (top, bottom), (left, right) = region
    rows, columns = maps.shape[1], maps.shape[2]
    return maps[:, round(top * rows) : round(bottom * rows), round(left * columns) : round(right * columns)]


def balanced_crossentropy(positive_rate: np.ndarray) -> Callable[[Any, Any], Any]:
    """Binary cross-entropy with each attribute's two classes weighted equally (weights 0.5 / class rate).

    Plain cross-entropy calibrates p to CelebA's base rates, so p >= 0.5 needs overwhelming evidence for a rare
    attribute: such a judge calls only about one real moustache in six a moustache. Weighted, p >= 0.5 means
    "more likely than not if both classes were equally common", a fair verdict on any single face.
    """
    rate = np.clip(positive_rate.astype(np.float32), 1e-3, 1 - 1e-3)
    positive_weight, negative_weight = 0.5 / rate, 0.5 / (1 - rate)

    def loss(y_true: Any, y_pred: Any) -> Any:
        p = ops.clip(y_pred, 1e-7, 1 - 1e-7)
        terms = positive_weight * y_true * ops.log(p) + negative_weight * (1 - y_true) * ops.log(1 - p)
        return -ops.mean(terms, axis=-1)

    return loss


def verdict_rates(probabilities: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    """Per attribute, how often p >= 0.5 agrees with the labels: recall on faces with it, specificity without."""
    verdicts, positive = probabilities >= 0.5, labels > 0
    rates = {}
    for i, name in enumerate(names):
        has, lacks = positive[:, i], ~positive[:, i]
        rates[name] = {
            "recall": float(verdicts[has, i].mean()) if has.any() else float("nan"),
            "specificity": float((~verdicts[lacks, i]).mean()) if lacks.any() else float("nan"),
        }
    return rates


def validation_auc(probabilities: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, float | None]:
    """ROC AUC per attribute (labels 1/-1 or 1/0); None where the split has only one class."""
    positive = labels > 0
    return {
        name: float(roc_auc_score(positive[:, i], probabilities[:, i]))
        if 0 < positive[:, i].sum() < len(labels)
        else None
        for i, name in enumerate(names)
    }


@dataclass
class AttributeClassifier:
    """A trained classifier: `predict` gives each face's 40 probabilities and its penultimate features."""

    config: ClassifierConfig
    attributes: list[str]
    model: keras.Model  # outputs [probabilities, features]
    report: dict[str, Any]
    _extractors: dict[int, keras.Model] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_training_model(
        cls, config: ClassifierConfig, attributes: list[str], trained: keras.Model, report: dict[str, Any]
    ) -> AttributeClassifier:
        model = keras.Model(trained.input, [trained.output, trained.get_layer(FEATURES_LAYER).output])
        return cls(config, attributes, model, report)

    @classmethod
    def load(cls, folder: Path) -> AttributeClassifier:
        """Rebuild the network from classifier.json and load its weights."""
        saved = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        config = ClassifierConfig.model_validate(saved["config"])
        trained = build_classifier(config, len(saved["attributes"]))
        trained.load_weights(folder / WEIGHTS_FILE)
        return cls.from_training_model(config, saved["attributes"], trained, saved)

    def predict(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 faces [N, size, size, 3] -> (probabilities [N, attributes], features [N, features])."""
        if faces.shape[1:] != (self.config.image_size, self.config.image_size, 3):
            raise ValueError(f"faces are {faces.shape[1:]}, the classifier takes {self.config.image_size}px RGB")
        probabilities, features = self.model.predict(faces.astype(np.float32), batch_size=PREDICT_BATCH, verbose=0)
        return probabilities, features

    def column(self, attribute: str) -> int:
        return self.attributes.index(attribute)

    def activations(self, faces: np.ndarray, count: int) -> list[np.ndarray]:
        """uint8 faces [N, size, size, 3] -> the first `count` ReLU activations, each [N, h, w, channels]."""
        if count not in self._extractors:
            self._extractors[count] = keras.Model(self.model.input, relu_outputs(self.model, count))
        return list(self._extractors[count].predict(faces.astype(np.float32), batch_size=PREDICT_BATCH, verbose=0))


def train_classifier(
    config: ClassifierConfig, data_dir: Path, out: Path, cache_dir: Path | None
) -> AttributeClassifier:
    """Train on the training split, measure validation AUC, write weights + JSON to `out`."""
    return fit_classifier(config, prepare_data(config.data_config(), data_dir, cache_dir, skip_bad=False), out)


def fit_classifier(config: ClassifierConfig, data: PreparedData, out: Path) -> AttributeClassifier:
    """`train_classifier` on faces already prepared with `config.data_config()`'s framing and split."""
    if data.labels is None:
        raise ValueError(f"{data.dataset.root} has no attribute file; the classifier needs CelebA's labels")
    names = list(config.attributes or data.dataset.attribute_names)
    labels = data.labels[:, [data.dataset.attribute_names.index(name) for name in names]]
    targets = (labels > 0).astype(np.float32)
    train, val = data.train, data.val
    if config.among is not None:
        among = data.labels[:, data.dataset.attribute_names.index(config.among)] > 0
        train, val = train[among[train]], val[among[val]]
    keras.utils.set_random_seed(config.seed)
    model = build_classifier(config, len(names))
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=balanced_crossentropy(targets[train].mean(axis=0)) if config.balanced else "binary_crossentropy",
        metrics=[keras.metrics.AUC(multi_label=True, num_labels=len(names), name="auc")],
    )
    started = time.perf_counter()
    history = model.fit(
        data.images[train],
        targets[train],
        validation_data=(data.images[val], targets[val]),
        batch_size=config.batch_size,
        epochs=config.epochs,
        shuffle=True,
        verbose=1 if sys.stderr.isatty() else 2,
    )
    seconds = time.perf_counter() - started
    classifier = AttributeClassifier.from_training_model(config, names, model, {})
    probabilities, _ = classifier.predict(data.images[val])
    auc = validation_auc(probabilities, labels[val], names)
    known = [value for value in auc.values() if value is not None]
    classifier.report = {
        "config": config.model_dump(),
        "attributes": names,
        "validation_auc": auc,
        "mean_validation_auc": float(np.mean(known)) if known else None,
        "validation_at_half": verdict_rates(probabilities, labels[val], names),
        "train": len(train),
        "validation": len(val),
        "seconds": round(seconds, 1),
        "train_images_per_second": round(len(train) * config.epochs / seconds, 1),
        "history": {key: [float(v) for v in values] for key, values in history.history.items()},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out.mkdir(parents=True, exist_ok=True)
    model.save_weights(out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(classifier.report, indent=1) + "\n", encoding="utf-8")
    log.info(
        "classifier: %d epochs in %.0f s, mean validation AUC %.3f, written to %s",
        config.epochs,
        seconds,
        classifier.report["mean_validation_auc"] or float("nan"),
        out,
    )
    return classifier


def perceptual_network(config: TrainConfig, data: PreparedData, folder: Path) -> keras.Model:
    """The face network a VAE's perceptual loss compares in: loaded from `folder`, or trained there first.

    A classifier of its own, not the benchmark's judge: trained on the same training split but without blur or
    noise (its features should notice exactly what blur removes), with plain cross-entropy and from another seed,
    so the VAE is never trained against the network that scores it.
    """
    if not (folder / CONFIG_FILE).is_file():
        settings = ClassifierConfig.framing_like(
            config,
            config.max_images,
            blur_probability=0.0,
            noise_std=0.0,
            balanced=False,
            epochs=config.perceptual_epochs,
            seed=config.seed + 1,
        )
        log.info("training the perceptual loss's face network (%d epochs) into %s", settings.epochs, folder)
        return fit_classifier(settings, data, folder).model
    return AttributeClassifier.load(folder).model


def default_out(image_size: int, upper_lip: bool = False) -> Path:
    return REPO_ROOT / "runs" / f"classifier-{image_size}{'-upper-lip' if upper_lip else ''}"


def main(argv: list[str] | None = None) -> None:
    defaults = ClassifierConfig()
    parser = argparse.ArgumentParser(prog="python -m training.classifier", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="CelebA-layout folder (img_align_celeba + labels)")
    parser.add_argument("--out", type=Path, help="folder to write (default: runs/classifier-<image size>)")
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="(default: %(default)s)")
    parser.add_argument("--crop", type=float, nargs=4, default=defaults.crop, help="left top right bottom fractions")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction, help="(default: %(default)s)")
    parser.add_argument("--max-images", type=int, help="use only the first N images (default: all)")
    parser.add_argument("--epochs", type=int, help=f"(default: {defaults.epochs})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="(default: %(default)s)")
    parser.add_argument(
        "--blur-probability", type=float, default=defaults.blur_probability, help="(default: %(default)s; 0 = off)"
    )
    parser.add_argument(
        "--blur-sigma", type=float, nargs=2, default=defaults.blur_sigma, help="min max (default: %(default)s)"
    )
    parser.add_argument("--noise-std", type=float, default=defaults.noise_std, help="(default: %(default)s; 0 = off)")
    parser.add_argument(
        "--unbalanced", action="store_true", help="plain cross-entropy (p calibrated to the attributes' base rates)"
    )
    parser.add_argument(
        "--upper-lip",
        action="store_true",
        help="train the moustache's upper-lip judge instead (UPPER_LIP: the upper lip only, among men, 12 epochs "
        "unless --epochs; default out: runs/classifier-<image size>-upper-lip)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="(default: %(default)s, the judge's; other seeds give the further judges of docs/benchmarks.md, "
        "not 7-9, 11, 13 or 14, the edits' guides and held-out classifiers)",
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="decoded-face cache (as training's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ClassifierConfig(
        image_size=args.image_size,
        crop=tuple(args.crop),
        val_fraction=args.val_fraction,
        max_images=args.max_images,
        batch_size=args.batch_size,
        blur_probability=args.blur_probability,
        blur_sigma=tuple(args.blur_sigma),
        noise_std=args.noise_std,
        balanced=not args.unbalanced,
        seed=args.seed,
        **(UPPER_LIP if args.upper_lip else {}) | ({"epochs": args.epochs} if args.epochs else {}),
    )
    out = args.out or default_out(args.image_size, args.upper_lip)
    classifier = train_classifier(config, args.data, out, args.cache_dir)
    rates = classifier.report["validation_at_half"]
    print(f"{'attribute':<20} {'AUC':>6} {'recall':>7} {'specif.':>7}  (validation, p >= 0.5)")
    for name, auc in classifier.report["validation_auc"].items():
        shown = "-" if auc is None else f"{auc:.3f}"
        print(f"{name:<20} {shown:>6} {rates[name]['recall']:>7.2f} {rates[name]['specificity']:>7.2f}")
    print(f"mean validation AUC {classifier.report['mean_validation_auc']}")


if __name__ == "__main__":
    main()
