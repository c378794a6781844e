"""Latent statistics (the sampling trick) and attribute vectors: plain numpy, no TensorFlow."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from service.bundle import AttributeVector, LatentStats


class LatentStatsAccumulator:
    """Running per-dimension sums of z_mean and exp(0.5 * z_log_var) over every training batch."""

    def __init__(self, z_dim: int) -> None:
        self.mean_sum = np.zeros(z_dim, dtype=np.float64)
        self.std_sum = np.zeros(z_dim, dtype=np.float64)
        self.count = 0

    def update(self, z_mean: np.ndarray, z_log_var: np.ndarray) -> None:
        self.mean_sum += z_mean.sum(axis=0)
        self.std_sum += np.exp(0.5 * z_log_var.astype(np.float64)).sum(axis=0)
        self.count += len(z_mean)

    def result(self) -> LatentStats:
        if self.count == 0:
            raise ValueError("no latents accumulated")
        std = self.std_sum / self.count
        return LatentStats(
            mean=(self.mean_sum / self.count).tolist(), std=std.tolist(), std_scalar=float(std.mean()), count=self.count
        )


def attribute_vectors(
    names: list[str],
    z_train: np.ndarray,
    labels_train: np.ndarray,
    z_val: np.ndarray,
    labels_val: np.ndarray,
    min_positives: int,
) -> tuple[list[AttributeVector], list[dict[str, object]]]:
    """mean(z | attr = 1) - mean(z | attr = -1) per attribute, with its spread and validation AUC.

    Returns the kept vectors and, for attributes with too few positives (or no validation faces of
    one class, so no AUC), why they were left out.
    """
    kept: list[AttributeVector] = []
    left_out: list[dict[str, object]] = []
    for column, name in enumerate(names):
        positive = labels_train[:, column] > 0
        positives, negatives = int(positive.sum()), int((~positive).sum())
        val_positive = labels_val[:, column] > 0
        if positives < min_positives or negatives < min_positives:
            left_out.append({"name": name, "positives": positives, "negatives": negatives, "reason": "too few faces"})
            continue
        if val_positive.all() or not val_positive.any():
            left_out.append({"name": name, "positives": positives, "negatives": negatives, "reason": "no AUC"})
            continue
        vector = z_train[positive].mean(axis=0) - z_train[~positive].mean(axis=0)
        norm = float(np.linalg.norm(vector))
        projections = z_train @ (vector / norm)
        kept.append(
            AttributeVector(
                name=name,
                vector=vector.astype(np.float32).tolist(),
                norm=norm,
                projection_std=float(projections.std()),
                auc=float(roc_auc_score(val_positive, z_val @ vector)),
                positives=positives,
                negatives=negatives,
            )
        )
    return kept, left_out
