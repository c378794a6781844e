"""`report.png`: what a person wants to see after training, in one picture."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def image_row(images: np.ndarray) -> np.ndarray:
    """[n, h, w, 3] in [0, 1] or uint8 -> one [h, n*w, 3] float strip."""
    faces = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images
    return np.concatenate(list(np.clip(faces, 0.0, 1.0)), axis=1)


def draw_report(
    path: Path,
    history: dict[str, list[float]],
    inputs: np.ndarray,
    reconstructions: np.ndarray,
    prior: np.ndarray,
    trick: np.ndarray,
    title: str,
) -> None:
    """Loss curves; validation inputs above their reconstructions; prior beside sampling-trick samples."""
    fig = plt.figure(figsize=(12, 9), layout="constrained")
    grid = fig.add_gridspec(3, 2, height_ratios=[1.1, 1.0, 0.55])
    for column, (key, label) in enumerate([("reconstruction_loss", "reconstruction MSE"), ("kl_loss", "KL (nats)")]):
        axis = fig.add_subplot(grid[0, column])
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key, [])
            axis.plot(range(1, len(values) + 1), values, style, label=("validation " if prefix else "train ") + label)
        axis.set_xlabel("epoch")
        axis.set_title(label)
        axis.legend()
    faces = fig.add_subplot(grid[1, :])
    faces.imshow(np.concatenate([image_row(inputs), image_row(reconstructions)], axis=0))
    faces.set_title("validation faces (top) and their reconstructions (bottom)")
    faces.axis("off")
    for column, (samples, label) in enumerate([(prior, "prior N(0, I)"), (trick, "sampling trick")]):
        axis = fig.add_subplot(grid[2, column])
        axis.imshow(image_row(samples))
        axis.set_title(f"samples: {label}")
        axis.axis("off")
    fig.suptitle(title)
    fig.savefig(path, dpi=80)
    plt.close(fig)
