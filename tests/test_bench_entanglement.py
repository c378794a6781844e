"""The entanglement benchmark's projection: unrelated attributes' directions out, related ones kept."""

from __future__ import annotations

import numpy as np

from bench.bench_entanglement import projected_vectors
from service.bundle import AttributeVector


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
