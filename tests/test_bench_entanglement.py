"""The entanglement benchmark: unrelated attributes' directions projected out, related ones kept; the same-face
changes that measure the judge's floor keep the photo's pixels, only moved or re-encoded."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bench.bench_entanglement import (
    SAME_FACE,
    independent_side_effects,
    projected_vectors,
    real_shifts,
    same_face_variants,
    tables,
)
from service.core.bundle import AttributeVector


def vectors_for(names: list[str], labels: np.ndarray, z: np.ndarray) -> list[AttributeVector]:
    result = []
    for column, name in enumerate(names):
        positive = labels[:, column] > 0
        vector = z[positive].mean(axis=0) - z[~positive].mean(axis=0)
        norm = float(np.linalg.norm(vector))
        step = float((z[positive] @ vector).mean() - (z[~positive] @ vector).mean()) / norm
        result.append(
            AttributeVector(
                name=name,
                method="mean_difference",
                vector=vector.tolist(),
                norm=norm,
                step=step,
                projection_std=1.0,
                auc=0.9,
                positives=int(positive.sum()),
                negatives=int((~positive).sum()),
            )
        )
    return result


def test_unrelated_directions_are_projected_out_and_related_ones_kept() -> None:
    rng = np.random.default_rng(0)
    count = 2000
    a = rng.random(count) < 0.5
    b = np.where(rng.random(count) < 0.9, a, ~a)  # strongly related to a (phi about 0.8)
    c = rng.random(count) < 0.5  # unrelated to both
    labels = np.where(np.stack([a, b, c], axis=1), 1, -1).astype(np.int8)
    z = rng.standard_normal((count, 6)) + labels @ rng.standard_normal((3, 6))
    names = ["A", "B", "C"]
    shipped = vectors_for(names, labels, z)

    variants = projected_vectors(names, labels, z, shipped)

    by_variant = {variant: {v.name: v for v in vectors} for variant, vectors in variants.items()}
    projected_a = np.asarray(by_variant["projected"]["A"].vector)
    assert abs(projected_a @ np.asarray(shipped[2].vector)) < 1e-4 * np.linalg.norm(projected_a)  # C is out
    assert abs(projected_a @ np.asarray(shipped[1].vector)) > 0.1 * np.linalg.norm(projected_a)  # B is not
    assert by_variant["full length"]["A"].step == shipped[0].step
    gap = by_variant["projected"]["A"].step
    assert 0 < gap < shipped[0].step  # what is left of the direction separates the classes less far
    assert by_variant["shipped"]["A"] is shipped[0]


def test_same_face_variants_move_or_re_encode_the_photo_s_own_pixels() -> None:
    rows, columns = np.mgrid[0:16, 0:16]
    smooth = 30 + 8 * columns + 3 * rows  # JPEG keeps a smooth image within a few levels; no column is repeated
    faces = np.stack([smooth + 10 * k for k in range(3)])[..., None].repeat(3, axis=3).astype(np.uint8)
    variants = same_face_variants(faces, 255 - faces)
    assert list(variants) == list(SAME_FACE)
    for variant in variants.values():
        assert variant.shape == faces.shape and variant.dtype == np.uint8
    np.testing.assert_array_equal(variants["mirrored"][:, :, ::-1], faces)
    np.testing.assert_array_equal(variants["shifted 1 px"][:, :, 1:], faces[:, :, :-1])
    np.testing.assert_array_equal(variants["shifted 1 px"][:, :, 0], faces[:, :, 0])  # the edge column repeats
    assert 0 < np.abs(variants["JPEG q75"].astype(int) - faces).mean() < 3
    np.testing.assert_array_equal(variants["reconstructed"], 255 - faces)


def test_independent_side_effects_count_only_the_judge_independent_columns() -> None:
    strength = {"changed": [0.5, 0.1, 0.3, 0.0], "random_changed": [0.1, 0.1, 0.1, 0.2], "side_effects": 0.3}
    rows = [
        {"attribute": "A", "strengths": {"+2": dict(strength)}},
        {"attribute": "B", "strengths": {"+2": dict(strength)}},
    ]
    shifts = {"A": np.array([0.0, 0.3, -0.2, 0.05]), "B": np.zeros(4)}
    independent_side_effects(rows, {"A": [1, 2], "B": []}, {"A": [1, 2, 3], "B": []}, shifts, list("WXYZ"))
    a, b = rows[0]["strengths"]["+2"], rows[1]["strengths"]["+2"]
    assert a["independent_side_effects"] == pytest.approx(0.2) and a["independent_random"] == pytest.approx(0.1)
    assert a["independent_ratio"] == pytest.approx(2.0)
    assert b["independent_side_effects"] is None and b["independent_ratio"] is None  # nothing to count on
    assert "changed" not in a and "random_changed" not in a and a["side_effects"] == 0.3  # the lists are dropped
    # Only unrelated columns are named (W is the edited attribute's own), the largest excess over the random move first.
    assert list(a["largest_excess"]) == ["Y", "X", "Z"]
    assert a["largest_excess"]["Y"] == {"excess": pytest.approx(0.2), "real_shift": pytest.approx(-0.2)}
    assert a["largest_excess"]["Z"]["excess"] == pytest.approx(-0.2)
    assert b["largest_excess"] == {}


def test_real_shifts_compare_photos_with_and_without_within_each_sex(monkeypatch: pytest.MonkeyPatch) -> None:
    """A verdict that only follows sex must not count as going with an attribute that is commoner among men."""
    male = np.array([1] * 40 + [-1] * 40)
    moustache = np.array([1] * 30 + [-1] * 10 + [1] * 5 + [-1] * 35)  # 75 % of the men, 12.5 % of the women
    labels = np.stack([male, moustache], axis=1)
    verdicts = np.stack([male > 0, male > 0, moustache > 0], axis=1)  # column 1 follows sex only, 2 the attribute
    monkeypatch.setattr("bench.bench_quality.judge", lambda classifier, faces: (verdicts[faces[:, 0]], None))
    data = SimpleNamespace(
        labels=labels,
        val=np.arange(80),
        images=np.arange(80)[:, None],
        dataset=SimpleNamespace(attribute_names=["Male", "Mustache"]),
    )
    judging = SimpleNamespace(classifier=None, attributes=["Mustache"])
    shifts = real_shifts(SimpleNamespace(data=data), judging)
    np.testing.assert_allclose(shifts["Mustache"], [0.0, 0.0, 1.0])


def test_the_breakdown_table_names_the_learned_edits_largest_excesses_with_their_real_shifts() -> None:
    def effect(side: float, excess: dict[str, dict[str, float]]) -> dict[str, object]:
        keys = ("success", "success_where_it_occurs", "side_ratio", "person_perceptual", "person_inner_face")
        more = ("person", "move_length", "independent_side_effects", "independent_ratio")
        return {
            **dict.fromkeys(keys + more, 1.0),
            "side_effects": side,
            "random_side_effects": 0.1,
            "largest_excess": excess,
        }

    excess = {"Eyeglasses": {"excess": 0.43, "real_shift": 0.29}}
    rows = [
        {
            "attribute": "Chubby",
            "variant": "learned",
            "direction": "add",
            "unrelated": 30,
            "strengths": {"+2": effect(0.2, excess)},
        },
        {
            "attribute": "Chubby",
            "variant": "learned",
            "direction": "remove",
            "unrelated": 30,
            "strengths": {"-2": effect(0.1, {})},
        },
        {
            "attribute": "Chubby",
            "variant": "shipped",
            "direction": "add",
            "unrelated": 30,
            "strengths": {"+2": effect(0.3, {})},
        },
    ]
    floor = [
        {
            "attribute": "Chubby",
            "faces": 1,
            "unrelated": 30,
            **dict.fromkeys(SAME_FACE, 0.1),
            "real change": 0.1,
            "independent": 16,
            "largest shifts": {"Eyeglasses": 0.29},
        }
    ]
    found = [t for t in tables({"model": "m", "rows": rows, "floor": floor}) if "fall" in t.title]
    assert len(found) == 1 and found[0].rows == [["Chubby", "3.00", "Eyeglasses +0.43 (real +0.29)"]]
