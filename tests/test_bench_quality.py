"""The quality benchmark's perceptual distance: LPIPS's normalisation, and the inner face counted on its own."""

from __future__ import annotations

import numpy as np

from bench.bench_quality import INNER_FACE, perceptual_distances


def activations(rng: np.random.Generator, faces: int = 4) -> list[np.ndarray]:
    """Positive activations shaped like the judge's first three ReLU layers on 64 px faces, fewer channels."""
    return [rng.random((faces, side, side, 8)) + 0.1 for side in (32, 16, 8)]


def test_distance_ignores_each_position_s_scale_and_grows_with_change() -> None:
    rng = np.random.default_rng(0)
    ours = activations(rng)
    scaled = [layer * rng.uniform(0.5, 3.0, size=(*layer.shape[:3], 1)) for layer in ours]
    whole, inner = perceptual_distances(ours, scaled)
    np.testing.assert_allclose(whole, 0.0, atol=1e-12)  # unit-normalised over channels at every position
    np.testing.assert_allclose(inner, 0.0, atol=1e-12)

    slightly = [layer + 0.05 * rng.random(layer.shape) for layer in ours]
    strongly = [layer + 0.5 * rng.random(layer.shape) for layer in ours]
    assert (perceptual_distances(ours, slightly)[0] > 0).all()
    assert (perceptual_distances(ours, slightly)[0] < perceptual_distances(ours, strongly)[0]).all()


def test_a_change_outside_the_inner_face_counts_only_for_the_whole_picture() -> None:
    rng = np.random.default_rng(1)
    ours = activations(rng)
    (top, _), _ = INNER_FACE
    background = []
    for layer in ours:
        changed = layer.copy()
        rows = round(top * layer.shape[1])
        changed[:, :rows] = rng.random(changed[:, :rows].shape) + 0.1  # the top rows: hair and background
        background.append(changed)
    whole, inner = perceptual_distances(ours, background)
    assert (whole > 0.01).all()
    np.testing.assert_allclose(inner, 0.0, atol=1e-12)

    face = []
    for layer in ours:
        changed = layer.copy()
        middle = layer.shape[1] // 2
        changed[:, middle, middle] = rng.random(changed[:, middle, middle].shape) + 0.1  # the nose
        face.append(changed)
    whole, inner = perceptual_distances(ours, face)
    assert (inner > whole).all()  # the same change weighs more within the smaller region
