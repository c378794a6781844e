"""Reading faces: the official CelebA layout (or a plain folder), framing, caching and tf.data.

Images are decoded and framed once with the service's own `frame_face`, so training sees exactly
what the service will feed the encoder, and cached as uint8 `.npz` (read with allow_pickle=False) keyed by the file
list and the framing. The training pipeline then runs from memory and is never the bottleneck.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from service.core.alignment import frame_face
from service.core.bundle import Preprocess

log = logging.getLogger(__name__)

IMAGE_DIR = "img_align_celeba"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

#: The central 140 x 140 pixels of CelebA's 178 x 218 aligned faces (70 x 70 of the 89 x 109
#: subset), a little below the image centre: the whole face from chin to forehead plus a band of
#: hair, with little background to spend 64 pixels on. Fractions, so any resolution frames alike.
CELEBA_CROP = (19 / 178, 43 / 218, 159 / 178, 183 / 218)


class DataError(ValueError):
    """The data folder cannot be trained on; the message names the file and the problem."""


@dataclass(frozen=True)
class FaceDataset:
    """Image files and, when the folder has an attribute file, their 1/-1 labels."""

    root: Path
    image_dir: Path
    files: list[str]
    attribute_names: list[str]
    labels: np.ndarray | None  # int8 [len(files), len(attribute_names)], 1 or -1

    @property
    def has_attributes(self) -> bool:
        return self.labels is not None

    def describe(self) -> dict[str, object]:
        """What the manifest records about the data: counts, layout, never machine paths."""
        return {
            "layout": "celeba" if self.has_attributes else "plain folder",
            "images": len(self.files),
            "attribute_file": ATTRIBUTE_FILE if self.has_attributes else None,
            "attributes": len(self.attribute_names),
        }


def read_attribute_file(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Parse `list_attr_celeba.txt`: a count, the names, then `file v1 ... vN` lines of 1/-1."""
    lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [fields for fields in lines if fields]
    if len(lines) < 2:
        raise DataError(f"{path}: expected a count line and a names line")
    try:
        count = int(lines[0][0])
    except ValueError as exc:
        raise DataError(f"{path}: line 1 must be the number of images, got {lines[0][0]!r}") from exc
    names = lines[1]
    rows: dict[str, np.ndarray] = {}
    for number, fields in enumerate(lines[2:], start=3):
        if len(fields) != len(names) + 1:
            raise DataError(f"{path}: line {number} has {len(fields) - 1} values, expected {len(names)}")
        try:
            values = np.array([int(v) for v in fields[1:]], dtype=np.int8)
        except ValueError as exc:
            raise DataError(f"{path}: line {number} has a value that is not 1 or -1") from exc
        if not np.all(np.abs(values) == 1):
            raise DataError(f"{path}: line {number} has a value that is not 1 or -1")
        rows[fields[0]] = values
    if count != len(rows):
        raise DataError(f"{path}: line 1 says {count} images but {len(rows)} are listed")
    return names, rows


def discover(data_dir: Path) -> FaceDataset:
    """Find the images: `DIR/img_align_celeba/*.jpg` + `DIR/list_attr_celeba.txt`, or a plain folder."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder does not exist")
    image_dir = data_dir / IMAGE_DIR if (data_dir / IMAGE_DIR).is_dir() else data_dir
    files = sorted(p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    attribute_path = data_dir / ATTRIBUTE_FILE
    if not attribute_path.is_file():
        log.warning(
            "%s not found: training without attribute labels, the bundle gets no attribute vectors", attribute_path
        )
        return FaceDataset(data_dir, image_dir, files, [], None)
    names, rows = read_attribute_file(attribute_path)
    unknown = sorted(set(rows) - set(files))
    if unknown:
        raise DataError(f"{attribute_path}: lists {len(unknown)} file(s) not in {image_dir}, e.g. {unknown[0]}")
    unlabelled = sorted(set(files) - set(rows))
    if unlabelled:
        raise DataError(f"{attribute_path}: has no labels for {len(unlabelled)} image(s), e.g. {unlabelled[0]}")
    labels = np.stack([rows[f] for f in files])
    return FaceDataset(data_dir, image_dir, files, names, labels)


def is_validation(file_name: str, fraction: float) -> bool:
    """Deterministic split by file name: a file is in validation on every machine and every run."""
    bucket = int.from_bytes(hashlib.sha256(file_name.encode()).digest()[:4], "big") / 2**32
    return bucket < fraction


def split(files: Sequence[str], fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation files."""
    mask = np.array([is_validation(f, fraction) for f in files], dtype=bool)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _cache_key(dataset: FaceDataset, preprocess: Preprocess) -> str:
    digest = hashlib.sha256(preprocess.model_dump_json().encode())
    for name in dataset.files:
        stat = (dataset.image_dir / name).stat()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _load_one(path: Path, preprocess: Preprocess) -> np.ndarray | None:
    try:
        with Image.open(path) as image:
            image.load()
            return frame_face(image, preprocess)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        log.error("%s: unreadable image (%s)", path, exc)
        return None


def load_images(
    dataset: FaceDataset, preprocess: Preprocess, cache_dir: Path | None, skip_bad: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and frame every image once: (uint8 [N, size, size, 3], indices of the files kept).

    An unreadable image stops the run with its name, unless `skip_bad`, which leaves it out
    (with its labels) and logs it: the model never trains on garbage either way.
    """
    cache = cache_dir / f"faces-{_cache_key(dataset, preprocess)}.npz" if cache_dir else None
    if cache and cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            log.info("decoded faces from cache %s", cache)
            return stored["images"], stored["kept"]
    paths = [dataset.image_dir / f for f in dataset.files]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        framed = list(
            tqdm(pool.map(lambda p: _load_one(p, preprocess), paths), total=len(paths), desc="decode", unit="img")
        )
    bad = [p.name for p, image in zip(paths, framed, strict=True) if image is None]
    if bad and not skip_bad:
        raise DataError(f"{dataset.image_dir / bad[0]}: unreadable image ({len(bad)} in all); --skip-bad-images skips")
    if bad:
        log.warning("skipped %d unreadable image(s): %s", len(bad), ", ".join(bad[:10]))
    kept = np.array([i for i, image in enumerate(framed) if image is not None], dtype=np.int64)
    images = np.stack([framed[i] for i in kept])
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, images=images, kept=kept)
        (cache.with_suffix(".json")).write_text(json.dumps({"files": len(kept), "preprocess": preprocess.model_dump()}))
    return images, kept


def as_tf_dataset(
    images: np.ndarray, batch_size: int, shuffle_seed: int | None = None, drop_remainder: bool = False
) -> tf.data.Dataset:
    """uint8 faces in memory -> shuffled (when seeded) float32 batches in [0, 1], prefetched.

    `drop_remainder` leaves out the last partial batch, which training on several replicas needs: split among
    them it can leave a replica with no faces at all, which BatchNorm cannot take."""
    ds = tf.data.Dataset.from_tensor_slices(images)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(
        lambda x: tf.cast(x, tf.float32) / 255.0, num_parallel_calls=tf.data.AUTOTUNE
    )
    return ds.prefetch(tf.data.AUTOTUNE)
