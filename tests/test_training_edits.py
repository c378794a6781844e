"""The learned editor's shape (training/edits.py): it moves a code as far as the class-mean move of the same strength
and no further, returns the code itself at strength 0, and keeps the attributes the labels say are unrelated."""

from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from service.core.bundle import DEFAULT_MODEL
from training.cli import _field_value, main
from training.config import EditConfig
from training.edits import EditTrainer, build_correction, build_editor, keep_weights


def _editor(z_dim: int = 6, attributes: int = 2) -> tuple[keras.Model, np.ndarray]:
    rng = np.random.default_rng(0)
    moves = rng.normal(size=(attributes, z_dim)).astype(np.float32)
    correction = build_correction(z_dim, attributes, hidden=8)
    # Training starts the correction at zero; random weights stand for a trained one here.
    correction.set_weights([rng.normal(0.0, 0.5, w.shape).astype(np.float32) for w in correction.get_weights()])
    return build_editor(moves, correction), moves


def test_the_editor_turns_the_class_mean_move_but_keeps_its_length() -> None:
    editor, moves = _editor()
    z = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    strengths = np.array([[2.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.5, 0.0], [0.0, -2.5]], dtype=np.float32)
    edited = editor.predict([z, strengths], verbose=0)
    straight = strengths @ moves
    np.testing.assert_allclose(np.linalg.norm(edited - z, axis=1), np.linalg.norm(straight, axis=1), rtol=1e-4)
    cosine = np.sum((edited - z) * straight, axis=1) / np.linalg.norm(straight, axis=1) ** 2
    assert np.all(cosine < 0.9999)  # a direction of its own, not the class-mean move


def test_strength_zero_returns_the_code_itself() -> None:
    editor, _ = _editor()
    z = np.random.default_rng(2).normal(size=(3, 6)).astype(np.float32)
    np.testing.assert_array_equal(editor.predict([z, np.zeros((3, 2), np.float32)], verbose=0), z)


def test_keep_weights_hold_unrelated_attributes_and_free_those_that_go_together() -> None:
    rng = np.random.default_rng(3)
    a = rng.random(4000) < 0.5
    b = np.where(rng.random(4000) < 0.9, a, ~a)  # phi about 0.8 with a
    c = rng.random(4000) < 0.5  # unrelated
    d = np.where(rng.random(4000) < 0.65, a, ~a)  # phi about 0.3 with a
    weights = keep_weights(np.where(np.stack([a, b, c, d], axis=1), 1, -1))
    assert weights[0, 1] == 0.0 and weights[0, 2] == 1.0
    assert 0.2 < weights[0, 3] < 0.8
    np.testing.assert_allclose(weights, weights.T)


@pytest.mark.parametrize(
    ("setting", "message"),
    [("keep_weight=-1", "keep_weight"), ("keep_wieght=1", "FIELD one of"), ("keep_weight", "FIELD=VALUE")],
)
def test_edits_refuses_a_setting_it_cannot_use_before_any_work(
    setting: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["edits", "--data", "nowhere", "--bundle", str(DEFAULT_MODEL), "--set", setting])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_edits_settings_are_read_as_json() -> None:
    assert _field_value("keep_weight=24") == ("keep_weight", 24)
    assert _field_value('attributes=["Smiling"]') == ("attributes", ["Smiling"])
    assert _field_value("target_logit=1.5") == ("target_logit", 1.5)


def test_target_multipliers_rise_while_an_attribute_falls_short_and_fall_while_it_is_done() -> None:
    config = EditConfig(attributes=("Smiling", "Chubby"), multiplier_rate=0.5, success_goal=0.9)
    trainer = SimpleNamespace(config=config, success=tf.Variable([0.9, 0.9]), multipliers=tf.Variable([1.0, 1.0]))
    chosen = tf.constant([0, 0, 1, 1, 1])
    strength = tf.constant([2.5, -2.0, 2.0, 3.0, 1.0])  # the last is below goal_strength: not counted
    moved = tf.constant([1.0, 0.5, -1.0, -0.5, 5.0])  # Smiling's edits done, Chubby's not
    for _ in range(20):
        clear = EditTrainer._follow_goal(trainer, chosen, strength, moved)
    assert float(clear) == pytest.approx(0.5)
    smiling, chubby = trainer.multipliers.numpy()
    assert smiling < 1.0 < chubby
    assert trainer.success.numpy()[0] > 0.9 > trainer.success.numpy()[1]
