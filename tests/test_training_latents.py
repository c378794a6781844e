"""Latent statistics and attribute directions on synthetic latents whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from training.latents import DIRECTION_METHODS, aggregate_posterior, attribute_direction, attribute_vectors


def test_aggregate_posterior_adds_the_spread_of_the_means_to_the_mean_variance() -> None:
    rng = np.random.default_rng(1)
    mixing = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 2.0]])
    z_mean = rng.normal(0.0, 1.0, (20000, 3)) @ mixing.T + [1.0, -1.0, 0.5]
    z_log_var = np.log(np.full((20000, 3), [0.25, 1.0, 0.04]))
    stats = aggregate_posterior(z_mean, z_log_var, default_mode="textbook")

    expected = mixing @ mixing.T + np.diag([0.25, 1.0, 0.04])
    cholesky = np.asarray(stats.covariance_cholesky)
    np.testing.assert_allclose(cholesky @ cholesky.T, expected, atol=0.05)
    np.testing.assert_array_equal(np.triu(cholesky, 1), 0.0)
    np.testing.assert_allclose(stats.mean, [1.0, -1.0, 0.5], atol=0.03)
    np.testing.assert_allclose(stats.std, np.sqrt(np.diag(expected)), rtol=0.02)
    np.testing.assert_allclose(stats.posterior_std, [0.5, 1.0, 0.2], rtol=1e-6)
    # The textbook's scalar is the average posterior std: far narrower than the codes themselves.
    assert stats.std_scalar == pytest.approx(0.5667, abs=1e-3)
    assert (stats.count, stats.default_mode) == (20000, "textbook")
    assert stats.check(3) is None
    assert stats.check(4) == "mean has 3 values, z_dim is 4"


def test_aggregate_posterior_needs_two_latents() -> None:
    with pytest.raises(ValueError, match="at least two"):
        aggregate_posterior(np.zeros((1, 3)), np.zeros((1, 3)))


def _labelled_latents(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Attribute 0 shifts z along dimension 0 by +2; attribute 1 is noise; attribute 2 is rare."""
    labels = np.where(rng.random((n, 3)) < [0.5, 0.5, 0.004], 1, -1).astype(np.int8)
    z = rng.normal(0.0, 1.0, (n, 5)).astype(np.float32)
    z[:, 0] += 2.0 * (labels[:, 0] > 0)
    return z, labels


@pytest.mark.parametrize("method", DIRECTION_METHODS)
def test_attribute_vectors_find_the_shift_its_step_and_auc(method: str) -> None:
    rng = np.random.default_rng(2)
    z_train, labels_train = _labelled_latents(rng, 4000)
    z_val, labels_val = _labelled_latents(rng, 2000)
    names = ["Shifted", "Noise", "Rare"]
    kept, left_out = attribute_vectors(names, z_train, labels_train, z_val, labels_val, 20, method=method)

    assert "Shifted" in [v.name for v in kept]
    assert {"name": "Rare", "reason": "too few faces"}.items() <= left_out[-1].items()
    shifted = kept[0]
    assert shifted.method == method
    np.testing.assert_allclose(np.abs(shifted.unit), [1, 0, 0, 0, 0], atol=0.08)
    assert shifted.norm == pytest.approx(np.linalg.norm(shifted.vector), rel=1e-5)
    assert shifted.positives + shifted.negatives == 4000
    # Strength 1 moves a face by the gap between the class means: 2 along dimension 0.
    assert shifted.step == pytest.approx(2.0, abs=0.1)
    # Projections onto dim 0: a 50/50 mixture of N(0,1) and N(2,1) has std sqrt(1 + 1) = 1.414.
    assert shifted.projection_std == pytest.approx(np.sqrt(2.0), rel=0.05)
    # AUC of two unit normals 2 apart: Phi(2 / sqrt 2) = 0.921.
    assert shifted.auc == pytest.approx(0.921, abs=0.02)


def test_balanced_direction_cancels_a_confounder_that_the_plain_difference_keeps() -> None:
    """Mustache-like: the attribute occurs mostly in one stratum (men), which also moves z along dimension 1."""
    rng = np.random.default_rng(3)
    n = 20000
    male = rng.random(n) < 0.5
    mustache = rng.random(n) < np.where(male, 0.3, 0.02)
    z = rng.normal(0.0, 1.0, (n, 3))
    z[:, 0] += 2.0 * mustache
    z[:, 1] += 3.0 * male
    plain = attribute_direction("mean_difference", z, mustache)
    balanced = attribute_direction("balanced", z, mustache, stratum=male)
    assert abs(plain[1]) > 1.0  # the plain difference is partly a sex change
    assert abs(balanced[1]) < 0.15
    assert balanced[0] == pytest.approx(2.0, abs=0.15)


def test_unknown_direction_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown direction method 'pca'"):
        attribute_direction("pca", np.zeros((4, 2)), np.array([True, False, True, False]))  # type: ignore[arg-type]
