"""A judge of part of the face (training/classifier.py): it sees only its region, learns from the faces it is told to
learn from, and predicts only the attributes it was given (the moustache's upper-lip judge is one)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from training.classifier import UPPER_LIP, AttributeClassifier, ClassifierConfig, build_classifier, fit_classifier

NAMES = ["Male", "Mustache", "Smiling"]


def test_a_region_judge_sees_nothing_outside_its_region() -> None:
    config = ClassifierConfig(image_size=64, **UPPER_LIP)
    network = build_classifier(config, 1)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (4, 64, 64, 3)).astype(np.float32)
    (top, bottom), (left, right) = ((round(start * 64), round(end * 64)) for start, end in UPPER_LIP["region"])
    outside = faces.copy()
    outside[:, :top] = rng.integers(0, 256, outside[:, :top].shape)  # eyes, brows, hair
    outside[:, bottom:] = 0  # the chin
    outside[:, top:bottom, :left] = 255  # the cheeks
    inside = faces.copy()
    inside[:, top:bottom, left:right] = 255 - inside[:, top:bottom, left:right]
    seen = network.predict(faces, verbose=0)
    np.testing.assert_array_equal(network.predict(outside, verbose=0), seen)
    assert np.abs(network.predict(inside, verbose=0) - seen).max() > 1e-4


def test_a_judge_among_men_learns_and_is_validated_on_men_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    faces = 60
    labels = np.where(rng.random((faces, len(NAMES))) < 0.5, 1, -1)
    labels[:, 1] = np.where(labels[:, 0] > 0, labels[:, 1], -1)  # no woman has a moustache, as in CelebA
    images = rng.integers(0, 256, (faces, 16, 16, 3)).astype(np.uint8)
    train, val = np.arange(0, 45), np.arange(45, faces)
    data = SimpleNamespace(
        labels=labels, images=images, train=train, val=val, dataset=SimpleNamespace(attribute_names=NAMES)
    )
    config = ClassifierConfig(
        image_size=16, filters=(4,), features=8, epochs=1, among="Male", attributes=("Mustache",), blur_probability=0
    )
    trained = fit_classifier(config, data, tmp_path)

    men = labels[:, 0] > 0
    assert trained.attributes == ["Mustache"]
    assert trained.report["train"] == np.count_nonzero(men[train])
    assert trained.report["validation"] == np.count_nonzero(men[val])
    probabilities, _ = trained.predict(images)
    assert probabilities.shape == (faces, 1)
    loaded = AttributeClassifier.load(tmp_path)
    np.testing.assert_allclose(loaded.predict(images)[0], probabilities, atol=1e-6)
    assert loaded.config.among == "Male"
