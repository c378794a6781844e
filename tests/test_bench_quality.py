"""The quality benchmark's perceptual distance (LPIPS's normalisation, and the inner face counted on its own) and its
upper-lip verdicts."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from bench.bench_quality import INNER_FACE, Judged, edit_effect, perceptual_distances


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


def test_the_upper_lip_judge_counts_the_edited_the_unedited_and_the_randomly_moved_faces_apart() -> None:
    """A moustache judged on the edited faces only, and the random move as long as each face's edit."""
    z_dim = 4

    def edit_codes(z: np.ndarray, strengths: object, keep: object) -> np.ndarray:
        edited = z.copy()
        edited[:, 0] = 6.0  # every edit moves code[0] past 5, 6 long
        return edited

    model = SimpleNamespace(
        z_dim=z_dim,
        bundle=SimpleNamespace(latent_stats=SimpleNamespace(cholesky_array=np.eye(z_dim, dtype=np.float32))),
        decode=lambda codes: codes[:, :1, None, None] * np.ones((1, 8, 8, 3)),  # a "face" showing code[0]
        edit_codes=edit_codes,
    )

    def predict(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # a "moustache" where code[0] passed 5
        return (faces[:, :1, 0, 0] > 5.0).astype(np.float32), faces[:, 0, 0, :2]

    judge_ = SimpleNamespace(
        predict=predict, activations=lambda faces, count: [faces + 0.1] * count, attributes=["Mustache"]
    )
    z = np.zeros((200, z_dim), np.float32)
    unedited = Judged.of(judge_, model.decode(z))
    effect = edit_effect(model, judge_, z, unedited, {"Mustache": 2.0}, 0, True, [], upper_lip=judge_)
    shown = effect["upper_lip"]
    assert shown["edited"] == 1.0 and shown["unedited"] == 0.0
    # A random direction 6 long moves code[0] past 5 only when it points almost along it: a few faces of 200.
    assert 0.0 < shown["random_move"] < 0.1
