"""Latent statistics and attribute vectors on synthetic latents whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from training.latents import LatentStatsAccumulator, attribute_vectors


def test_latent_stats_accumulate_every_batch() -> None:
    rng = np.random.default_rng(1)
    z_mean = rng.normal(2.0, 1.0, (1000, 4)).astype(np.float32)
    z_log_var = np.log(np.full((1000, 4), [0.25, 1.0, 4.0, 1.0], dtype=np.float32))
    accumulator = LatentStatsAccumulator(4)
    for start in range(0, 1000, 64):  # uneven last batch on purpose
        accumulator.update(z_mean[start : start + 64], z_log_var[start : start + 64])
    stats = accumulator.result()
    np.testing.assert_allclose(stats.mean, z_mean.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats.std, [0.5, 1.0, 2.0, 1.0], rtol=1e-5)
    assert stats.std_scalar == pytest.approx(1.125)
    assert stats.count == 1000


def test_empty_accumulator_refuses() -> None:
    with pytest.raises(ValueError, match="no latents"):
        LatentStatsAccumulator(3).result()


def _labelled_latents(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Attribute 0 shifts z along dimension 0 by +2; attribute 1 is noise; attribute 2 is rare."""
    labels = np.where(rng.random((n, 3)) < [0.5, 0.5, 0.004], 1, -1).astype(np.int8)
    z = rng.normal(0.0, 1.0, (n, 5)).astype(np.float32)
    z[:, 0] += 2.0 * (labels[:, 0] > 0)
    return z, labels


def test_attribute_vector_is_the_class_mean_difference_with_its_auc() -> None:
    rng = np.random.default_rng(2)
    z_train, labels_train = _labelled_latents(rng, 4000)
    z_val, labels_val = _labelled_latents(rng, 2000)
    kept, left_out = attribute_vectors(["Shifted", "Noise", "Rare"], z_train, labels_train, z_val, labels_val, 20)

    assert [v.name for v in kept] == ["Shifted", "Noise"]
    assert left_out[0]["name"] == "Rare"
    assert left_out[0]["positives"] < 20
    shifted, noise = kept
    vector = np.asarray(shifted.vector)
    assert vector[0] == pytest.approx(2.0, abs=0.1)
    np.testing.assert_allclose(vector[1:], 0.0, atol=0.1)
    assert shifted.norm == pytest.approx(np.linalg.norm(vector), rel=1e-5)
    assert shifted.positives + shifted.negatives == 4000
    # Projections onto dim 0: a 50/50 mixture of N(0,1) and N(2,1) has std sqrt(1 + 1) = 1.414.
    assert shifted.projection_std == pytest.approx(np.sqrt(2.0), rel=0.05)
    # AUC of two unit normals 2 apart: Phi(2 / sqrt 2) = 0.921.
    assert shifted.auc == pytest.approx(0.921, abs=0.02)
    assert noise.auc == pytest.approx(0.5, abs=0.05)
