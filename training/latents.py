"""Latent statistics (the sampling trick) and attribute directions: plain numpy and scikit-learn, no TensorFlow."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from service.core.bundle import DIRECTION_METHODS, AttributeVector, DirectionMethod, LatentStats, SamplingMode

#: The attribute the balanced method stratifies by: CelebA's strongest confounder (Tom White, "Sampling
#: Generative Networks": without it the Mustache or Heavy_Makeup vector is mostly a sex change).
CONFOUNDER = "Male"


def aggregate_posterior(
    z_mean: np.ndarray,
    z_log_var: np.ndarray,
    default_mode: SamplingMode = SamplingMode.TRICK,
    jitter: float = 1e-6,
) -> LatentStats:
    """A Gaussian fitted to the aggregate posterior q(z) = mean over faces of N(z_mean, sigma^2).

    Its covariance is Cov(z_mean) + diag(E[sigma^2]) (law of total variance); sampling from it draws codes
    where the decoder was trained (Ghosh et al. 2020's ex-post density estimation with one Gaussian). The
    textbook's scalar (mean posterior std, `std_scalar`) is kept for the `textbook` sampling mode.
    """
    if len(z_mean) < 2:
        raise ValueError("the aggregate posterior needs at least two latents")
    z_mean = z_mean.astype(np.float64)
    variance = np.exp(z_log_var.astype(np.float64))
    covariance = np.cov(z_mean, rowvar=False) + np.diag(variance.mean(axis=0))
    cholesky = np.linalg.cholesky(covariance + jitter * np.eye(len(covariance)))
    posterior_std = np.sqrt(variance).mean(axis=0)
    return LatentStats(
        mean=z_mean.mean(axis=0).tolist(),
        std=np.sqrt(np.diag(covariance)).tolist(),
        posterior_std=posterior_std.tolist(),
        std_scalar=float(posterior_std.mean()),
        covariance_cholesky=np.tril(cholesky).tolist(),
        count=len(z_mean),
        default_mode=default_mode,
    )


def _mean_difference(z: np.ndarray, positive: np.ndarray) -> np.ndarray:
    return z[positive].mean(axis=0) - z[~positive].mean(axis=0)


def _balanced(z: np.ndarray, positive: np.ndarray, stratum: np.ndarray, min_positives: int) -> np.ndarray:
    """Mean of the within-stratum class-mean differences: the confounder's own direction cancels out."""
    parts = [
        _mean_difference(z[stratum == value], positive[stratum == value])
        for value in (False, True)
        if min(positive[stratum == value].sum(), (~positive[stratum == value]).sum()) >= min_positives
    ]
    return np.mean(parts, axis=0) if parts else _mean_difference(z, positive)


def _linear(z: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """The normal of a class-balanced logistic regression's boundary (InterFaceGAN, Shen et al. 2020)."""
    classifier = LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000)
    classifier.fit(z, positive)
    return classifier.coef_[0]


def attribute_direction(
    method: DirectionMethod,
    z: np.ndarray,
    positive: np.ndarray,
    stratum: np.ndarray | None = None,
    min_positives: int = 20,
) -> np.ndarray:
    """An (unnormalised) latent direction along which the attribute grows; `stratum` is the confounder's labels."""
    if method == "mean_difference":
        return _mean_difference(z, positive)
    if method == "balanced":
        return _mean_difference(z, positive) if stratum is None else _balanced(z, positive, stratum, min_positives)
    if method == "linear":
        return _linear(z, positive)
    raise ValueError(f"unknown direction method {method!r}; choose from {DIRECTION_METHODS}")


def attribute_vectors(
    names: list[str],
    z_train: np.ndarray,
    labels_train: np.ndarray,
    z_val: np.ndarray,
    labels_val: np.ndarray,
    min_positives: int,
    method: DirectionMethod = "mean_difference",
) -> tuple[list[AttributeVector], list[dict[str, object]]]:
    """One direction per attribute by `method`, with the step that strength 1 moves, its spread and validation AUC.

    `step` is the gap between the mean projections of training faces with and without the attribute: strength 1
    moves a face by the average difference between the two groups, so +2 carries a typical face without it
    past a typical face with it. Attributes with too few positives (or no validation faces of one class, so no
    AUC) are left out with the reason.
    """
    kept: list[AttributeVector] = []
    left_out: list[dict[str, object]] = []
    confounder = labels_train[:, names.index(CONFOUNDER)] > 0 if CONFOUNDER in names else None
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
        stratum = None if name == CONFOUNDER else confounder
        vector = attribute_direction(method, z_train, positive, stratum, min_positives)
        norm = float(np.linalg.norm(vector))
        projections = z_train @ (vector / norm)
        step = float(projections[positive].mean() - projections[~positive].mean())
        if not step > 0:
            left_out.append({"name": name, "positives": positives, "negatives": negatives, "reason": "no separation"})
            continue
        kept.append(
            AttributeVector(
                name=name,
                method=method,
                vector=vector.astype(np.float32).tolist(),
                norm=norm,
                step=step,
                projection_std=float(projections.std()),
                auc=float(roc_auc_score(val_positive, z_val @ vector)),
                positives=positives,
                negatives=negatives,
            )
        )
    return kept, left_out
