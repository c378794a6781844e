"""The learned editor's shape (training/edits.py): it moves a code as far as the class-mean move of the same strength
times its length scale and no further, returns the code itself at strength 0, keeps the attributes the labels say
are unrelated, and its length scales are calibrated only as far as a held-out classifier needs."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from pydantic import ValidationError

from service.core.bundle import DEFAULT_MODEL
from training.classifier import (
    AttributeClassifier,
    ClassifierConfig,
    build_classifier,
    fit_classifier,
    relu_outputs,
)
from training.cli import _field_value, main
from training.config import FIRM_KEEP, FIRM_REDNESS, FREED, JUDGE_EPOCHS, VERDICT_KEEP, EditConfig
from training.edits import (
    RED_PATCH_BLOCKS,
    EditTrainer,
    build_correction,
    build_editor,
    calibrate_lengths,
    calibration_rows,
    guide_classifier,
    guide_folders,
    guide_logits,
    keep_matrix,
    keep_weights,
    last_layer,
    shortest_near_best,
    soft_box,
    train_editor,
)


def _editor(
    z_dim: int = 6, attributes: int = 2, length_scales: np.ndarray | None = None
) -> tuple[keras.Model, np.ndarray]:
    rng = np.random.default_rng(0)
    moves = rng.normal(size=(attributes, z_dim)).astype(np.float32)
    correction = build_correction(z_dim, attributes, hidden=8)
    # Training starts the correction at zero; random weights stand for a trained one here.
    correction.set_weights([rng.normal(0.0, 0.5, w.shape).astype(np.float32) for w in correction.get_weights()])
    return build_editor(moves, correction, length_scales), moves


def test_the_editor_turns_the_class_mean_move_but_keeps_its_length() -> None:
    editor, moves = _editor()
    z = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    strengths = np.array([[2.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.5, 0.0], [0.0, -2.5]], dtype=np.float32)
    edited = editor.predict([z, strengths], verbose=0)
    straight = strengths @ moves
    np.testing.assert_allclose(np.linalg.norm(edited - z, axis=1), np.linalg.norm(straight, axis=1), rtol=1e-4)
    cosine = np.sum((edited - z) * straight, axis=1) / np.linalg.norm(straight, axis=1) ** 2
    assert np.all(cosine < 0.9999)  # a direction of its own, not the class-mean move


def test_length_scales_lengthen_each_attributes_move_and_keep_its_direction() -> None:
    plain, _ = _editor()
    lengthened, _ = _editor(length_scales=np.array([1.5, 2.0], np.float32))
    z = np.random.default_rng(4).normal(size=(3, 6)).astype(np.float32)
    strengths = np.array([[2.0, 0.0], [0.0, -1.0], [0.0, 3.0]], dtype=np.float32)
    before = plain.predict([z, strengths], verbose=0) - z
    after = lengthened.predict([z, strengths], verbose=0) - z
    np.testing.assert_allclose(after, before * np.array([[1.5], [2.0], [2.0]]), rtol=1e-4, atol=1e-5)


class _LengthJudge:
    """Stands for the held-out classifier on 'faces' that are the codes themselves: attribute k is seen where the
    code is at least `needed[k]` from the origin."""

    attributes = ("Smiling", "Chubby")

    def __init__(self, needed: tuple[float, float]) -> None:
        self.needed = np.array(needed)

    def column(self, name: str) -> int:
        return self.attributes.index(name)

    def predict(self, faces: np.ndarray) -> tuple[np.ndarray, None]:
        return (np.linalg.norm(faces, axis=1)[:, np.newaxis] >= self.needed).astype(np.float32), None


def _smiling_and_chubby() -> tuple[functools.partial, EditConfig, np.ndarray, np.ndarray]:
    """`calibrate_lengths` waiting for its classifiers and config, on an editor of Smiling and Chubby and ten codes at
    the origin whose labels (columns Male, Smiling, Chubby) have neither; its config, those labels, and how far each
    attribute's +2 moves at length scale 1."""
    editor, moves = _editor()
    config = EditConfig(
        attributes=("Smiling", "Chubby"), length_scales=(1.0, 1.5, 2.0), clear_goal=0.98, calibration_min_examples=0
    )
    z = np.zeros((10, 6), np.float32)
    labels = -np.ones((10, 3), np.int8)
    calibrate = functools.partial(calibrate_lengths, editor, z, labels, ["Male", "Smiling", "Chubby"], lambda c: c)
    return calibrate, config, labels, np.linalg.norm(2.0 * moves, axis=1)


def test_calibration_lengthens_only_as_far_as_the_held_out_classifier_needs_and_not_in_vain() -> None:
    calibrate, config, labels, lengths = _smiling_and_chubby()
    # Smiling shows from 1.4 times its +2 move on; Chubby not even at twice it.
    judge = _LengthJudge((1.4 * lengths[0], 2.5 * lengths[1]))
    scales, seen, _ = calibrate([judge], config)  # type: ignore[list-item]
    np.testing.assert_array_equal(scales, [1.5, 1.0])
    assert seen == {"Smiling": {"1.0": 0.0, "1.5": 1.0}, "Chubby": {"1.0": 0.0, "1.5": 0.0, "2.0": 0.0}}
    # Where no training face qualifies (here: every face has Chubby), the length stays 1 and nothing is seen.
    labels[:, 2] = 1
    scales, seen, _ = calibrate([judge], config)  # type: ignore[list-item]
    np.testing.assert_array_equal(scales, [1.5, 1.0])
    assert seen["Chubby"] == {}


def test_calibration_goes_by_the_held_out_classifiers_mean_verdict_not_the_most_lenient_ones() -> None:
    calibrate, config, _, lengths = _smiling_and_chubby()
    # Three classifiers see Chubby from 1.2, 1.7 and 1.9 times its +2 move on: alone, the first would settle for 1.5;
    # two of the three (a mean probability of 2/3) see it only at 2.
    judges = [_LengthJudge((0.9 * lengths[0], needed * lengths[1])) for needed in (1.2, 1.7, 1.9)]
    assert calibrate(judges[:1], config)[0][1] == 1.5  # type: ignore[arg-type]
    scales, seen, _ = calibrate(judges, config)  # type: ignore[arg-type]
    np.testing.assert_array_equal(scales, [1.0, 2.0])
    assert seen["Chubby"] == {"1.0": 0.0, "1.5": 0.0, "2.0": 1.0}
    other = _LengthJudge((1.0, 1.0))
    other.attributes = ("Chubby", "Smiling")  # type: ignore[misc]  # the same columns in another order
    with pytest.raises(ValueError, match="different attributes"):
        calibrate([judges[0], other], config)  # type: ignore[list-item]


class _SideJudge:
    """Stands for the held-out classifier on 'faces' that are the codes themselves, from the origin: Chubby is seen
    from `chubby` times the length of the +2 move along it on, and Bangs, an unrelated attribute, only between
    `bangs` times that length along it (a side effect of some lengths of the edit and of no random move)."""

    attributes = ("Smiling", "Chubby", "Bangs")

    def __init__(self, move: np.ndarray, chubby: float, bangs: tuple[float, float]) -> None:
        self.unit = move / np.linalg.norm(move) ** 2  # faces @ unit: how many +2 moves along it
        self.chubby, self.bangs = chubby, bangs

    def column(self, name: str) -> int:
        return self.attributes.index(name)

    def predict(self, faces: np.ndarray) -> tuple[np.ndarray, None]:
        along = faces @ self.unit
        seen = [np.ones_like(along), along >= self.chubby, (along >= self.bangs[0]) & (along <= self.bangs[1])]
        return np.stack(seen, axis=1).astype(np.float32), None


def test_calibration_lengthens_a_clear_edit_until_it_changes_no_more_unrelated_verdicts_than_a_random_move() -> None:
    editor, _ = _editor()
    config = EditConfig(
        attributes=("Smiling", "Chubby"), length_scales=(1.0, 1.5, 2.0), clear_goal=0.98, calibration_min_examples=0
    )
    z = np.zeros((10, 6), np.float32)
    # columns: Male, Smiling (every face has it: not calibrated), Chubby (none has it), Bangs (unrelated to Chubby)
    labels = np.stack([-np.ones(10), np.ones(10), -np.ones(10), np.tile([1, -1], 5)], axis=1).astype(np.int8)
    move = editor.predict([z[:1], np.array([[0.0, 2.0]], np.float32)], verbose=0)[0]
    names = ["Male", "Smiling", "Chubby", "Bangs"]
    calibrate = functools.partial(calibrate_lengths, editor, z, labels, names, lambda c: c)
    # Chubby shows from 1.5 on, where Bangs comes with it; at 2.0 Bangs has gone again: the length is 2.
    scales, seen, sides = calibrate([_SideJudge(move, 1.4, (1.2, 1.8))], config)  # type: ignore[list-item]
    assert scales[1] == 2.0 and seen["Chubby"] == {"1.0": 0.0, "1.5": 1.0, "2.0": 1.0}
    assert sides["Chubby"]["1.5"] > 1.0 >= sides["Chubby"]["2.0"]
    # Success alone: the first clear length, as before; no clear length without Bangs: the cleanest, then shortest.
    success_alone = config.model_copy(update={"side_goal": None})
    scales, _, sides = calibrate([_SideJudge(move, 1.4, (1.2, 1.8))], success_alone)  # type: ignore[list-item]
    assert scales[1] == 1.5 and sides["Chubby"] == {}
    scales, _, sides = calibrate([_SideJudge(move, 1.4, (1.2, 9.0))], config)  # type: ignore[list-item]
    assert sides["Chubby"]["1.5"] > sides["Chubby"]["2.0"] > 1.0  # some random moves reach Bangs at 2.0
    assert scales[1] == 2.0


def test_where_no_length_is_clear_calibration_takes_the_shortest_as_good_as_the_best() -> None:
    # 400 faces: one standard error at 0.988 is 0.0054, so 0.983 counts as the best and 0.975 does not.
    near_goal = {"1.0": 0.955, "1.25": 0.975, "1.5": 0.981, "1.75": 0.983, "2.0": 0.988}
    assert shortest_near_best(near_goal, 400, shown_goal=0.9) == 1.75
    assert shortest_near_best(near_goal, 40, shown_goal=0.9) == 1.25  # fewer faces, a wider error
    # An edit that does not show at any length is not lengthened, nor one that peaks early and falls.
    assert shortest_near_best({"1.0": 0.302, "1.5": 0.443, "2.0": 0.393}, 400, shown_goal=0.9) == 1.0
    assert shortest_near_best({"1.0": 0.95, "1.5": 0.93}, 400, shown_goal=0.9) == 1.0


def test_calibration_keeps_to_the_sexes_in_which_the_attribute_occurs() -> None:
    names = ["Male", "Mustache", "Chubby"]
    male = np.arange(200) < 100
    mustache = male & (np.arange(200) % 4 == 0)  # 25 men, no woman
    chubby = np.arange(200) % 8 == 0  # 13 men, 12 women
    labels = np.where(np.stack([male, mustache, chubby], axis=1), 1, -1)
    config = EditConfig(calibration_min_examples=10, calibration_faces=1000)
    np.testing.assert_array_equal(calibration_rows(labels, names, "Mustache", config), np.flatnonzero(male & ~mustache))
    np.testing.assert_array_equal(calibration_rows(labels, names, "Chubby", config), np.flatnonzero(~chubby))
    np.testing.assert_array_equal(calibration_rows(labels, names, "Male", config), np.flatnonzero(~male))
    strict = config.model_copy(update={"calibration_min_examples": 13})
    np.testing.assert_array_equal(calibration_rows(labels, names, "Chubby", strict), np.flatnonzero(male & ~chubby))


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


def test_a_hidden_target_region_is_one_inside_zero_outside_with_a_short_ramp() -> None:
    mask = soft_box(64, ((0.25, 0.5), (0.5, 0.75)))[..., 0]
    assert mask.shape == (64, 64)
    assert mask[20, 40] == 1.0 and mask[10, 40] == 0.0 and mask[20, 20] == 0.0 and mask[40, 40] == 0.0
    assert 0.0 < mask[16, 40] < 1.0 and 0.0 < mask[20, 32] < 1.0  # a ramp at the edges, not a hard cut
    assert mask[14, 40] == 0.0 and mask[17, 40] == 1.0  # two pixels wide


def test_the_keep_matrix_boosts_the_named_attributes_for_one_edit_only_and_frees_each_edits_own() -> None:
    labels = np.where(np.random.default_rng(4).random((4000, 3)) < 0.5, 1, -1)  # three unrelated attributes
    config = EditConfig(attributes=("A", "C"), keep_boost={"C": {"B": 8.0}})
    kept = keep_matrix(labels, ["A", "B", "C"], config)
    np.testing.assert_allclose(kept, [[0.0, 1.0, 1.0], [1.0, 8.0, 0.0]])
    with pytest.raises(ValueError, match="keep_boost"):
        EditConfig(attributes=("A",), keep_boost={"C": {"B": 8.0}})


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


def test_firmly_verdict_redness_kept_and_freed_edits_default_to_their_tables_and_unknown_names_are_refused() -> None:
    config = EditConfig(attributes=("Smiling", "Blond_Hair", "Mustache"), keep_weight=8)
    assert config.attribute_keep_weights() == [FIRM_KEEP["Smiling"], 8.0, FIRM_KEEP["Mustache"]]
    assert config.verdict_keep == ("Smiling",)
    assert EditConfig().verdict_keep == VERDICT_KEEP
    # `--set attributes=...` still works: the tables keep to the attributes learnt.
    assert EditConfig(attributes=("Blond_Hair",)).keep_weight_by_attribute == {}
    assert EditConfig(attributes=("Chubby",)).verdict_keep == ()
    assert EditConfig().redness_weight_by_attribute == FIRM_REDNESS
    assert config.attribute_redness_weights() == [config.redness_weight] * 3  # FIRM_REDNESS names none of them
    assert EditConfig(attributes=("Chubby",)).redness_weight_by_attribute == {}
    assert EditConfig().keep_boost == FREED
    assert EditConfig(attributes=("Chubby",)).keep_boost == {"Chubby": FREED["Chubby"]}
    assert config.keep_boost == {}  # FREED frees only Chubby's edits
    with pytest.raises(ValidationError, match="Smilng"):
        EditConfig(attributes=("Chubby",), keep_weight_by_attribute={"Smilng": 3})
    with pytest.raises(ValidationError, match="verdict_keep names attributes the editor does not learn"):
        EditConfig(attributes=("Chubby",), verdict_keep=("Male",))


def _keep_trainer(config: EditConfig, kept: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(
        config=config,
        kept=tf.constant(kept),
        keep_loss_weights=tf.constant(config.attribute_keep_weights()),
        verdict_kept=tf.constant([name in config.verdict_keep for name in config.attributes]),
    )


def test_the_keep_loss_weighs_each_face_by_its_edited_attributes_keep_weight() -> None:
    config = EditConfig(attributes=("Smiling", "Blond_Hair"), keep_weight=8, verdict_keep=())  # Smiling firmly kept
    kept = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], np.float32)  # [K, A]: Blond_Hair keeps only column 0
    logits0 = tf.zeros([2, 3])
    logits1 = tf.constant([[5.0, 2.0, 2.0], [2.0, 5.0, 5.0]])  # each face moves its kept columns alike
    reported, trained = EditTrainer._keep(_keep_trainer(config, kept), tf.constant([0, 1]), logits0, logits1)
    p1 = 1.0 / (1.0 + np.exp(-2.0))
    moved = 0.5 * np.log(0.5 / p1) + 0.5 * np.log(0.5 / (1.0 - p1))  # KL(Bernoulli(0.5) || Bernoulli(p1)), each face
    assert float(reported) == pytest.approx(moved, rel=1e-5)
    assert float(trained) == pytest.approx((FIRM_KEEP["Smiling"] + 8.0) / 2 * moved, rel=1e-5)


def test_the_verdict_keep_counts_only_logits_that_come_closer_to_the_other_verdict() -> None:
    config = EditConfig(
        attributes=("Smiling", "Chubby"), keep_weight=1, keep_weight_by_attribute={}, verdict_keep=("Smiling",)
    )
    kept = np.ones((2, 4), np.float32)
    logits0 = tf.constant([[3.0, 3.0, -0.5, -2.0]] * 2)
    # Further from the boundary, towards it but still a margin away, 0.25 closer than it was, across by 1.
    logits1 = tf.constant([[6.0, 1.5, -0.25, 1.0]] * 2)
    reported, _ = EditTrainer._keep(_keep_trainer(config, kept), tf.constant([0, 1]), logits0, logits1)
    crossing = (0.0 + 0.0 + 0.25 + 2.0) / 4  # Smiling's face: how far inside the margin (or its own distance)
    p0, p1 = (1.0 / (1.0 + np.exp(-np.array(v))) for v in ([3.0, 3.0, -0.5, -2.0], [6.0, 1.5, -0.25, 1.0]))
    kl = np.mean(p0 * np.log(p0 / p1) + (1 - p0) * np.log((1 - p0) / (1 - p1)))  # Chubby's face: every move counts
    assert float(reported) == pytest.approx((crossing + kl) / 2, rel=1e-5)


def test_the_perceptual_loss_is_the_distance_the_benchmark_measures() -> None:
    """Trained against the guide's layers, judged in the judge's: the same distance, so the two can be compared."""
    from bench.bench_quality import perceptual_distances

    pixels = keras.Input(shape=(16, 16, 3))
    x = pixels
    for width in (4, 8, 8):
        x = keras.layers.ReLU()(keras.layers.Conv2D(width, 3, strides=2, padding="same")(x))
    network = keras.Model(pixels, x)
    trainer = SimpleNamespace(looks=keras.Model(pixels, relu_outputs(network, 3)))
    rng = np.random.default_rng(0)
    faces0 = rng.uniform(0, 255, (5, 16, 16, 3)).astype(np.float32)
    faces1 = np.clip(faces0 + rng.normal(0, 40, faces0.shape), 0, 255).astype(np.float32)

    assert float(EditTrainer._perceptual(trainer, tf.constant(faces0), tf.constant(faces0))) == pytest.approx(0.0)
    trained = float(EditTrainer._perceptual(trainer, tf.constant(faces0), tf.constant(faces1)))
    measured, _ = perceptual_distances(
        trainer.looks.predict(faces1, verbose=0), trainer.looks.predict(faces0, verbose=0)
    )
    assert trained > 0.01
    assert trained == pytest.approx(float(measured.mean()), rel=1e-4)


def test_the_redness_loss_counts_a_red_patch_on_the_face_and_not_hair_darkening_paling_or_a_faint_tint() -> None:
    """The red nose every classifier here reads as male: a patch of the inner face that turns red counts; red hair
    (outside the inner face), a dark moustache, lipstick taken away and a tint within the margin do not."""
    trainer = SimpleNamespace(config=EditConfig(redness_margin=0.02), redness_weights=tf.constant([100.0, 300.0]))
    faces0 = np.full((1, 64, 64, 3), 150.0, np.float32)
    red = np.array([60.0, -25.0, -25.0], np.float32)
    redder = (60.0 * 0.5 + 25.0 * 0.4187 + 25.0 * 0.0813) / 255.0  # YCbCr's Cr

    def redness(faces1: np.ndarray, chosen: int = 0) -> tuple[float, float]:
        reported, weighted = EditTrainer._redness(
            trainer, tf.constant([chosen]), tf.constant(faces0), tf.constant(faces1, tf.float32)
        )
        return float(reported), float(weighted)

    nose, hair = faces0.copy(), faces0.copy()
    nose[:, 32:40, 28:36] += red  # four blocks of 4 x 4 pixels
    hair[:, 0:12] += red
    moustache = faces0 - 60.0
    paler = faces0 + np.array([-30.0, 10.0, 10.0], np.float32)
    tint = faces0 + np.array([4.0, 0.0, 0.0], np.float32)
    assert redness(faces0) == redness(hair) == (0.0, 0.0)
    assert redness(moustache) == redness(paler) == redness(tint) == (0.0, 0.0)
    expected = 4 * redder / RED_PATCH_BLOCKS - 0.02
    assert redness(nose) == pytest.approx((expected, 100 * expected), rel=1e-4)
    assert redness(nose, chosen=1) == pytest.approx((expected, 300 * expected), rel=1e-4)  # its edit's own weight


def _guide(seed: int) -> AttributeClassifier:
    config = ClassifierConfig(image_size=16, filters=(4,), features=8, seed=seed)
    keras.utils.set_random_seed(seed)
    return AttributeClassifier.from_training_model(config, ["Smiling", "Male"], build_classifier(config, 2), {})


def test_several_guides_read_an_edit_by_their_mean_logit_in_training_as_in_the_starting_logits() -> None:
    guides = [_guide(7), _guide(8)]
    faces = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    each = []
    for guide in guides:
        _, features = guide.predict(faces)
        kernel, bias = last_layer(guide)
        each.append(features @ kernel + bias)
    assert np.abs(each[0] - each[1]).max() > 1e-3  # two different classifiers

    logits, first_features = guide_logits(guides, faces)
    np.testing.assert_allclose(logits, (each[0] + each[1]) / 2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(first_features, guides[0].predict(faces)[1], rtol=1e-6)
    np.testing.assert_allclose(guide_logits(guides[:1], faces)[0], each[0], rtol=1e-5, atol=1e-5)

    trainer = SimpleNamespace(
        guides=[(keras.Model(g.model.input, g.model.outputs[1]), *map(tf.constant, last_layer(g))) for g in guides]
    )
    trained, trained_features = EditTrainer._guides(trainer, tf.constant(faces, tf.float32))
    np.testing.assert_allclose(trained.numpy(), logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(trained_features.numpy(), first_features, rtol=1e-4, atol=1e-4)

    other = _guide(9)
    other.attributes = ["Male", "Smiling"]  # the same columns in another order: not averageable
    with pytest.raises(ValueError, match="different attributes"):
        train_editor(None, faces, faces, np.ones((3, 2)), ["Smiling", "Male"], [guides[0], other], EditConfig())


def test_the_held_out_classifier_is_trained_as_long_as_the_documented_judge() -> None:
    judge = "python -m training.classifier --data ../shared/data/celeba_subset --image-size 64 --epochs"
    benchmarks = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    assert f"{judge} {JUDGE_EPOCHS}   # the judge" in benchmarks.read_text()
    assert EditConfig().held_out_epochs == JUDGE_EPOCHS > EditConfig().guide_epochs


def test_each_guide_has_its_own_folder_and_seed_and_none_is_the_held_out_classifier(tmp_path: Path) -> None:
    assert guide_folders(tmp_path / "edit-guide-64", [7, 8, 9]) == [
        tmp_path / "edit-guide-64",
        tmp_path / "edit-guide-64-s8",
        tmp_path / "edit-guide-64-s9",
    ]
    rng = np.random.default_rng(1)
    data = SimpleNamespace(
        labels=np.where(rng.random((20, 2)) < 0.5, 1, -1),
        images=rng.integers(0, 256, (20, 16, 16, 3)).astype(np.uint8),
        train=np.arange(15),
        val=np.arange(15, 20),
        dataset=SimpleNamespace(attribute_names=["Smiling", "Male"]),
    )
    fit_classifier(ClassifierConfig(image_size=16, filters=(4,), features=8, epochs=1, seed=7), data, tmp_path)
    assert guide_classifier(tmp_path, SimpleNamespace(), SimpleNamespace(), 7, epochs=1).config.seed == 7
    with pytest.raises(ValueError, match="seed 7 trained for 1 epochs, not seed 8 for 1"):
        guide_classifier(tmp_path, SimpleNamespace(), SimpleNamespace(), 8, epochs=1)
    with pytest.raises(ValueError, match="not seed 7 for 12"):  # a guide's shorter training cannot calibrate
        guide_classifier(tmp_path, SimpleNamespace(), SimpleNamespace(), 7, epochs=EditConfig().held_out_epochs)
    with pytest.raises(ValidationError, match="held_out_seeds shares a seed with guide_seeds"):
        EditConfig(guide_seeds=[7, 11], held_out_seeds=[13, 11])
    with pytest.raises(ValidationError, match="guide_seeds repeats a seed"):
        EditConfig(guide_seeds=[7, 7])
    with pytest.raises(ValidationError, match="held_out_seeds repeats a seed"):
        EditConfig(held_out_seeds=[11, 11])
    with pytest.raises(ValidationError, match="guide_seeds"):
        EditConfig(guide_seeds=[])
