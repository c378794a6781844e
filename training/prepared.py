"""Decoded faces with their labels, split into training and validation: what every job starts from."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.core.bundle import Preprocess
from training.config import TrainConfig
from training.data import FaceDataset, discover, load_images, split

#: Where decoded faces are cached between runs (`prepare_data`), shared by training, the judge and the benchmarks.
DEFAULT_CACHE = Path(os.environ.get("FACEVAE_CACHE_DIR", Path.home() / ".cache" / "facevae"))

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Decoded faces with their labels, split into training and validation."""

    dataset: FaceDataset
    images: np.ndarray  # uint8 [N, size, size, 3]
    labels: np.ndarray | None  # int8 [N, attributes]
    train: np.ndarray  # indices into images
    val: np.ndarray

    def describe(self) -> dict[str, object]:
        return {
            **self.dataset.describe(),
            "used": len(self.images),
            "train": len(self.train),
            "validation": len(self.val),
        }


def preprocess_of(config: TrainConfig) -> Preprocess:
    return Preprocess(crop=config.crop, size=config.image_size)


def prepare_data(config: TrainConfig, data_dir: Path, cache_dir: Path | None, skip_bad: bool) -> PreparedData:
    """Discover, cap at --max-images, decode once, and split by file name."""
    dataset = discover(data_dir)
    if config.max_images is not None and config.max_images < len(dataset.files):
        labels = dataset.labels[: config.max_images] if dataset.labels is not None else None
        dataset = FaceDataset(
            dataset.root, dataset.image_dir, dataset.files[: config.max_images], dataset.attribute_names, labels
        )
    images, kept = load_images(dataset, preprocess_of(config), cache_dir, skip_bad)
    files = [dataset.files[i] for i in kept]
    train, val = split(files, config.val_fraction)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"{len(files)} images give an empty training or validation split; use more images")
    labels = dataset.labels[kept] if dataset.labels is not None else None
    log.info("%d images: %d train, %d validation", len(images), len(train), len(val))
    return PreparedData(dataset, images, labels, train, val)
