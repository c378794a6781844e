"""FaceModel without HTTP: providers, sampling, reparameterisation, editing math and input checks."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from PIL import Image

from service.core.alignment import frame_face
from service.core.bundle import DEFAULT_MODEL, ModelBundle
from service.core.framing import Align, FaceFramer
from service.core.runtime import FaceModel, InputError, SamplingMode
from service.core.sessions import CPU, CUDA, select_providers
from testkit.phone_photos import IMAGE_DIR, face_files
from tests.images import face_photo
from tests.tiny_bundle import IMAGE_SIZE, Z_DIM, add_tiny_editor

MAX_BATCH = 9


@pytest.fixture(scope="module")
def model(tiny_bundle: Path) -> FaceModel:
    return FaceModel.load(tiny_bundle, threads=1, max_batch=MAX_BATCH, max_strength=5.0)


def test_default_providers_prefer_cuda_only_when_offered() -> None:
    expected = [CUDA, CPU] if CUDA in ort.get_available_providers() else [CPU]
    assert select_providers([]) == expected


def test_unknown_provider_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="NoSuchExecutionProvider"):
        select_providers(["NoSuchExecutionProvider"])


def test_provider_missing_from_this_build_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    missing = next(name for name in ort.get_all_providers() if name not in ort.get_available_providers())
    with caplog.at_level(logging.WARNING, logger="service.core.sessions"):
        assert select_providers([missing, CPU]) == [CPU]
    assert missing in caplog.text


def test_sessions_report_the_providers_they_use(model: FaceModel) -> None:
    assert model.providers == {"encoder": model.encoder.get_providers(), "decoder": model.decoder.get_providers()}
    assert model.uses_gpu == (CUDA in model.encoder.get_providers())


def test_decode_gives_uint8_faces(model: FaceModel) -> None:
    faces = model.decode(np.zeros((3, Z_DIM), dtype=np.float32))
    assert faces.shape == (3, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert faces.dtype == np.uint8


def test_align_none_frames_with_the_manifest_crop(model: FaceModel) -> None:
    photo = face_photo()
    framed = FaceFramer(model.bundle.preprocess).frame(photo, Align.NONE)
    np.testing.assert_array_equal(framed.pixels, frame_face(photo, model.bundle.preprocess))
    assert framed.face is None


def test_encoding_sample_is_the_reparameterisation(model: FaceModel) -> None:
    encoding = model.encode_pixels(frame_face(face_photo(), model.bundle.preprocess)[np.newaxis])
    eps = np.random.default_rng(7).standard_normal(encoding.z_mean.shape, dtype=np.float32)
    expected = encoding.z_mean + np.exp(0.5 * encoding.z_log_var) * eps
    np.testing.assert_allclose(encoding.sample(np.random.default_rng(7)), expected, rtol=1e-6)


def test_without_refinement_the_code_is_z_mean(tiny_bundle: Path) -> None:
    plain = FaceModel.load(tiny_bundle, threads=1, max_batch=MAX_BATCH, max_strength=5.0, refine_steps=0)
    encoding = plain.encode_pixels(frame_face(face_photo(), plain.bundle.preprocess)[np.newaxis])
    np.testing.assert_array_equal(encoding.code, encoding.z_mean)


@pytest.mark.skipif(not IMAGE_DIR.is_dir(), reason=f"the shared CelebA subset is not at {IMAGE_DIR}")
def test_refined_codes_decode_to_faces_closer_to_the_photos() -> None:
    """On the default bundle and 40 CelebA faces: each step brings the decoded face's encoding nearer z_mean (the
    fixed point refinement solves for), and the decoded faces nearer the photos than decode(z_mean) is."""
    faces = []
    for path in face_files(40, 3000):
        with Image.open(path) as photo:
            faces.append(frame_face(photo.convert("RGB"), ModelBundle.load(DEFAULT_MODEL).preprocess))
    pixels = np.stack(faces)
    gaps, errors = [], []
    for steps in (0, 1, 3):
        refined = FaceModel.load(DEFAULT_MODEL, threads=1, max_batch=64, max_strength=5.0, refine_steps=steps)
        encoding = refined.encode_pixels(pixels)
        decoded = refined.decode(encoding.code)
        gaps.append(float(np.abs(refined.encode_pixels(decoded).z_mean - encoding.z_mean).mean()))
        errors.append(float(np.mean((decoded / 255.0 - pixels / 255.0) ** 2)))
    assert gaps[0] > gaps[1] > gaps[2], gaps
    assert errors[1] < errors[0] and errors[2] < errors[0], errors


def test_each_sampling_mode_transforms_the_same_prior_draw(model: FaceModel) -> None:
    stats = model.bundle.latent_stats
    prior = model.sample_latents(4, np.random.default_rng(3), SamplingMode.PRIOR, 1.0)
    textbook = model.sample_latents(4, np.random.default_rng(3), SamplingMode.TEXTBOOK, 0.5)
    trick = model.sample_latents(4, np.random.default_rng(3), SamplingMode.TRICK, 0.5)
    np.testing.assert_allclose(textbook, stats.mean_array + stats.std_scalar * 0.5 * prior, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(trick, stats.mean_array + 0.5 * prior @ stats.cholesky_array.T, rtol=1e-5, atol=1e-5)
    assert not np.allclose(trick, textbook)


def test_trick_draws_have_the_aggregate_posterior_covariance(model: FaceModel) -> None:
    z = np.concatenate(
        [model.sample_latents(MAX_BATCH, np.random.default_rng(i), SamplingMode.TRICK) for i in range(400)]
    )
    cholesky = model.bundle.latent_stats.cholesky_array
    np.testing.assert_allclose(np.cov(z, rowvar=False), cholesky @ cholesky.T, atol=0.08)
    np.testing.assert_allclose(z.mean(axis=0), model.bundle.latent_stats.mean_array, atol=0.08)


def test_default_sampling_mode_is_the_bundle_s(model: FaceModel) -> None:
    assert model.default_sampling is SamplingMode(model.bundle.latent_stats.default_mode)
    np.testing.assert_array_equal(
        model.sample_latents(2, np.random.default_rng(5)),
        model.sample_latents(2, np.random.default_rng(5), model.default_sampling, 1.0),
    )


@pytest.mark.parametrize("mode", list(SamplingMode))
def test_zero_temperature_gives_the_mode_s_centre(model: FaceModel, mode: SamplingMode) -> None:
    z = model.sample_latents(2, np.random.default_rng(0), mode, 0.0)
    centre = np.zeros(Z_DIM) if mode is SamplingMode.PRIOR else model.bundle.latent_stats.mean_array
    np.testing.assert_allclose(z, np.tile(centre, (2, 1)))


def test_sampling_more_than_max_batch_is_refused(model: FaceModel) -> None:
    with pytest.raises(InputError, match=f"maximum per request is {MAX_BATCH}") as caught:
        model.sample_latents(MAX_BATCH + 1, np.random.default_rng(0), SamplingMode.PRIOR, 1.0)
    assert caught.value.field == "n"


def _change(model: FaceModel, strengths: dict[str, float], keep: Sequence[str] = ()) -> np.ndarray:
    """What an edit adds to the zero code [Z_DIM]."""
    return model.edit_codes(np.zeros((1, Z_DIM), dtype=np.float32), strengths, keep)[0]


def test_without_an_editor_an_edit_is_strength_times_step_along_the_unit_vector(model: FaceModel) -> None:
    smiling, male = model.bundle.attributes["Smiling"], model.bundle.attributes["Male"]
    expected = 1.5 * smiling.step * smiling.unit - 2.0 * male.step * male.unit
    np.testing.assert_allclose(_change(model, {"smiling": 1.5, "MALE": -2.0}), expected, rtol=1e-5)


def test_keep_projects_the_kept_directions_out_of_the_edit(model: FaceModel) -> None:
    male, glasses = model.bundle.attributes["Male"], model.bundle.attributes["Eyeglasses"]
    plain = _change(model, {"Smiling": 2.0})
    kept = _change(model, {"Smiling": 2.0}, keep=["male", "Eyeglasses"])
    assert abs(plain @ male.unit) > 0.05  # random test vectors overlap, so there is something to remove
    assert kept @ male.unit == pytest.approx(0.0, abs=1e-5)
    assert kept @ glasses.unit == pytest.approx(0.0, abs=1e-5)
    # Only the kept directions are removed: what is left of the edit is the rest of it.
    residual = plain - kept
    basis, _ = np.linalg.qr(np.stack([male.unit, glasses.unit], axis=1))
    np.testing.assert_allclose(residual, basis @ (basis.T @ plain), atol=1e-5)


def test_keep_rejects_unknown_and_edited_attributes(model: FaceModel) -> None:
    with pytest.raises(InputError, match="unknown attribute 'Beard'") as caught:
        _change(model, {"Smiling": 1.0}, keep=["Beard"])
    assert caught.value.field == "keep"
    with pytest.raises(InputError, match="cannot both edit and keep Smiling"):
        _change(model, {"Smiling": 1.0}, keep=["SMILING"])


def test_the_same_attribute_twice_in_other_cases_is_refused(model: FaceModel) -> None:
    with pytest.raises(InputError, match="'Smiling' is given more than once"):
        _change(model, {"Smiling": 5.0, "smiling": 5.0})


def test_edit_strip_runs_from_minus_to_plus_strength_around_z(model: FaceModel) -> None:
    z = np.arange(Z_DIM, dtype=np.float32)
    offset = _change(model, {"Eyeglasses": 2.0})
    strip = model.edit(z, {"Eyeglasses": 2.0}, steps=5)
    assert strip.shape == (5, Z_DIM)
    np.testing.assert_allclose(strip[0], z - offset, rtol=1e-6)
    np.testing.assert_array_equal(strip[2], z)
    np.testing.assert_allclose(strip[4], z + offset, rtol=1e-6)


@pytest.fixture(scope="module")
def edited_by_editor(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> FaceModel:
    """The tiny bundle with a learned editor for Smiling and Eyeglasses (Male keeps its vector)."""
    path = tmp_path_factory.mktemp("editor") / "bundle"
    shutil.copytree(tiny_bundle, path)
    return FaceModel.load(add_tiny_editor(path), threads=1, max_batch=MAX_BATCH, max_strength=5.0)


def _editor_output(model: FaceModel, z: np.ndarray, strengths: np.ndarray) -> np.ndarray:
    """The tiny editor's function (tests/tiny_bundle.py `editor_graph`), computed here from the weights in its file."""
    assert model.bundle.editor_path is not None
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(model.bundle.editor_path).graph.initializer}
    turned = strengths @ weights["w"] + np.tanh(strengths @ weights["b"]) @ weights["c"]
    length = np.linalg.norm(strengths @ weights["wf"], axis=1, keepdims=True)
    return z + turned * length / (np.linalg.norm(turned, axis=1, keepdims=True) + weights["eps"])


def test_learned_attributes_move_by_the_editor_and_the_others_by_their_vector(edited_by_editor: FaceModel) -> None:
    model = edited_by_editor
    z = np.random.default_rng(3).normal(size=(4, Z_DIM)).astype(np.float32)
    male = model.bundle.attributes["Male"]
    # Male first (its vector), then the editor's columns one at a time: Smiling is column 0, Eyeglasses column 1.
    expected = z - 1.0 * male.step * male.unit
    expected = _editor_output(model, expected, np.tile([[2.0, 0.0]], (4, 1)))
    expected = _editor_output(model, expected, np.tile([[0.0, -1.5]], (4, 1)))
    edited = model.edit_codes(z, {"eyeglasses": -1.5, "Male": -1.0, "Smiling": 2.0})
    np.testing.assert_allclose(edited, expected, atol=1e-5)


def test_a_learned_strip_has_z_itself_in_the_middle_and_each_row_at_its_own_strength(
    edited_by_editor: FaceModel,
) -> None:
    z = np.random.default_rng(4).normal(size=Z_DIM).astype(np.float32)
    strip = edited_by_editor.edit(z, {"Smiling": 3.0}, steps=5)
    np.testing.assert_array_equal(strip[2], z)
    for row, strength in zip(strip, (-3.0, -1.5, 0.0, 1.5, 3.0), strict=True):
        np.testing.assert_allclose(
            row, _editor_output(edited_by_editor, z[np.newaxis], np.array([[strength, 0.0]]))[0], atol=1e-5
        )


def test_keep_projects_the_kept_directions_out_of_a_learned_edit(edited_by_editor: FaceModel) -> None:
    model = edited_by_editor
    z = np.random.default_rng(5).normal(size=(3, Z_DIM)).astype(np.float32)
    male = model.bundle.attributes["Male"]
    plain = model.edit_codes(z, {"Smiling": 2.0}) - z
    kept = model.edit_codes(z, {"Smiling": 2.0}, keep=["Male"]) - z
    assert np.abs(plain @ male.unit).min() > 0.01
    np.testing.assert_allclose(kept @ male.unit, 0.0, atol=1e-5)
    np.testing.assert_allclose(plain - kept, np.outer(plain @ male.unit, male.unit), atol=1e-5)


def test_edit_rejects_unknown_attributes_listing_valid_names(model: FaceModel) -> None:
    with pytest.raises(InputError, match="unknown attribute 'Beard'; valid names: Smiling, Male, Eyeglasses"):
        model.edit(np.zeros(Z_DIM, dtype=np.float32), {"Beard": 1.0})


def test_edit_rejects_strength_outside_the_bound(model: FaceModel) -> None:
    with pytest.raises(InputError, match=r"strength -5.5 for 'Smiling' is outside \[-5.0, 5.0\]"):
        model.edit(np.zeros(Z_DIM, dtype=np.float32), {"Smiling": -5.5})


def test_latents_check_count_and_length(model: FaceModel) -> None:
    assert model.latents([[0.0] * Z_DIM] * 2).shape == (2, Z_DIM)
    with pytest.raises(InputError, match=f"z has 3 values, expected {Z_DIM}"):
        model.latents([[0.0] * 3])
    with pytest.raises(InputError, match=f"z\\[1\\] has 9 values, expected {Z_DIM}"):
        model.latents([[0.0] * Z_DIM, [0.0] * 9])
    with pytest.raises(InputError, match="maximum per request"):
        model.latents([[0.0] * Z_DIM] * (MAX_BATCH + 1))
