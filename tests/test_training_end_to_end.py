"""A tiny real training run on the shared CelebA subset, through the CLI, into a verified bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.core.bundle import (
    ATTRIBUTES_FILE,
    DECODER_FILE,
    DECODER_INPUT,
    DECODER_OUTPUT,
    ENCODER_FILE,
    MANIFEST_FILE,
    BundleError,
    ModelBundle,
    sha256_file,
)
from service.core.detection import DETECTOR_NAME
from service.core.runtime import FaceModel
from service.core.sessions import open_session
from testkit.phone_photos import SUBSET
from tests.tiny_training import TINY
from training import export
from training.cli import build_parser, main
from training.config import TrainConfig
from training.train import load_run, phases

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SUBSET.is_dir(), reason=f"the shared CelebA subset is not at {SUBSET}"),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, bundle folder) of a one-epoch warm-up, resumed for a second epoch with the discriminator."""
    root = tmp_path_factory.mktemp("train")
    run, out, cache = root / "run", root / "bundle", root / "cache"
    common = ["--data", str(SUBSET), "--run-dir", str(run), "--cache-dir", str(cache), *TINY]
    assert main(["fit", *common]) == 0
    assert json.loads((run / "state.json").read_text())["epochs_done"] == 1
    out.mkdir()
    (out / "README.md").write_text("model card")  # a published bundle's card must survive re-export
    assert main(["train", *common, "--resume", "--epochs", "2", "--out", str(out)]) == 0
    return run, out


def test_resume_continues_the_run(trained: tuple[Path, Path]) -> None:
    run, _ = trained
    state = json.loads((run / "state.json").read_text())
    assert state["epochs_done"] == 2
    assert len(state["history"]["val_reconstruction_loss"]) == 2
    # The discriminator joined after the warm-up epoch, and the best checkpoint comes from its phase.
    assert state["history"]["discriminator_loss"][0] == 0.0
    assert state["history"]["discriminator_loss"][1] > 0.0
    assert state["history"]["adversarial_balance"][1] > 0.0
    assert state["best"] == state["history"]["val_reconstruction_loss"][1]
    assert (run / "best.weights.h5").is_file()


def test_export_keeps_the_model_card_beside_the_bundle(trained: tuple[Path, Path]) -> None:
    _, out = trained
    assert (out / "README.md").read_text() == "model card"
    assert not out.with_name(out.name + ".partial").exists()


def test_bundle_loads_and_runs_at_batch_1_and_16(trained: tuple[Path, Path]) -> None:
    _, out = trained
    bundle = ModelBundle.load(out)
    assert (bundle.image_size, bundle.z_dim) == (32, 16)
    manifest = bundle.manifest
    assert manifest.opset == 17
    assert manifest.parity["max_abs_diff"] <= 1e-4
    assert manifest.training["epochs_trained"] == 2
    assert manifest.dataset["used"] == 64
    assert "/" not in json.dumps(manifest.dataset)  # no machine paths
    assert 0 < manifest.metrics["val_reconstruction_mse"] < 0.2
    assert len(bundle.attributes) + len(manifest.attributes_left_out) == 40
    encoder = open_session(bundle.encoder_path)
    decoder = open_session(bundle.decoder_path)
    for batch in (1, 16):
        images = np.random.default_rng(batch).random((batch, 32, 32, 3), dtype=np.float32)
        z_mean, z_log_var = encoder.run(None, {"image": images})
        assert z_mean.shape == z_log_var.shape == (batch, 16)
        (decoded,) = decoder.run(None, {"z": z_mean})
        assert decoded.shape == (batch, 32, 32, 3)
        assert decoded.min() >= 0.0 and decoded.max() <= 1.0


@pytest.mark.parametrize("victim", [ENCODER_FILE, DECODER_FILE, ATTRIBUTES_FILE])
def test_tampered_bundle_fails_the_sha256_check(trained: tuple[Path, Path], tmp_path: Path, victim: str) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(trained[1], copy)
    with (copy / victim).open("ab") as f:
        f.write(b" ")
    with pytest.raises(BundleError, match=f"{victim}: sha256 does not match"):
        ModelBundle.load(copy)


def test_upgrade_measures_the_landmark_template_again_into_a_format_3_bundle(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    exported = ModelBundle.load(trained[1]).preprocess
    assert exported.landmarks is not None and exported.landmark_detector == DETECTOR_NAME
    copy = shutil.copytree(trained[1], tmp_path / "old")
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["format_version"] = 3
    del manifest["preprocess"]["landmark_detector"]
    manifest["preprocess"]["landmarks"] = [
        [0.36, 0.49],
        [0.64, 0.49],
        [0.5, 0.65],
        [0.38, 0.78],
        [0.62, 0.78],
    ]  # YuNet's
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format_version 3 is not supported"):
        ModelBundle.load(copy)
    assert main(["upgrade", "--bundle", str(copy), "--data", str(SUBSET), "--no-cache"]) == 0
    upgraded = ModelBundle.load(copy).preprocess
    np.testing.assert_allclose(upgraded.landmarks, exported.landmarks, atol=1e-9)  # the same faces, this detector
    assert upgraded.landmark_detector == DETECTOR_NAME
    manifest["format_version"] = 1
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="upgrade takes 3, 4, 5"):
        main(["upgrade", "--bundle", str(copy), "--data", str(SUBSET), "--no-cache"])


def test_rewrite_turns_an_export_without_the_graph_rewrites_into_this_version_s(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bundle exported before the rewrites existed gets them without its Keras model, computing the same (the
    upsampling exactly, its fold into the next convolution up to float rounding)."""
    run, out = trained
    copy = shutil.copytree(out, tmp_path / "earlier")
    _, vae = load_run(run)
    with monkeypatch.context() as patched:
        patched.setattr(export, "optimize_graph", lambda proto: 0)
        export.keras_to_onnx(vae.decoder, (DECODER_INPUT,), (DECODER_OUTPUT,), copy / DECODER_FILE)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["files"][DECODER_FILE] = sha256_file(copy / DECODER_FILE)
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))

    def op_types() -> set[str]:
        return {node.op_type for node in onnx.load(copy / DECODER_FILE).graph.node}

    def decoded() -> np.ndarray:
        session = open_session(copy / DECODER_FILE)
        z = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
        return session.run(None, {DECODER_INPUT: z})[0]

    assert "Tile" in op_types()
    earlier = decoded()
    capsys.readouterr()
    assert main(["rewrite", "--bundle", str(copy)]) == 0
    assert capsys.readouterr().out.strip() == DECODER_FILE
    assert "DepthToSpace" in op_types() and not {"Tile", "Resize"} & op_types()
    np.testing.assert_allclose(decoded(), earlier, rtol=0, atol=1e-5)
    ModelBundle.load(copy)  # the manifest has the new sum
    assert main(["rewrite", "--bundle", str(copy)]) == 0
    assert capsys.readouterr().out.strip() == "nothing to rewrite"


def test_check_command_accepts_the_bundle(trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(trained[1])]) == 0
    assert "tiny: 32px, z=16" in capsys.readouterr().out


def test_phases_warm_up_without_the_discriminator_first() -> None:
    assert phases(TrainConfig(epochs=10, warmup_epochs=3)) == [(0, 3, False), (3, 10, True)]
    assert phases(TrainConfig(epochs=10, warmup_epochs=0)) == [(0, 10, True)]
    assert phases(TrainConfig(epochs=10, adversarial_weight=0)) == [(0, 10, False)]
    assert phases(TrainConfig(epochs=3, warmup_epochs=5)) == [(0, 3, False)]


def test_help_explains_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ["--data", "--out", "--image-size", "--z-dim", "--epochs", "--batch-size", "--kl-weight",
                 "--max-images", "--seed", "--resume", "--crop", "--patience", "--adversarial-weight",
                 "--warmup-epochs", "--direction-method", "--default-sampling"]:  # fmt: skip
        assert flag in text


def test_card_figures_are_drawn_through_the_service_runtime(trained: tuple[Path, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(trained[1], bundle)
    assert main(["card", "--bundle", str(bundle), "--data", str(SUBSET), "--no-cache"]) == 0
    for figure in ("reconstructions.png", "samples.png", "edits.png"):
        assert (bundle / "card" / figure).stat().st_size > 1000
    has_both = {"Mustache", "Male"} <= set(ModelBundle.load(bundle).attributes)
    assert (bundle / "card" / "conditional_edits.png").is_file() == has_both
    figures = json.loads((bundle / "card" / "figures.json").read_text())
    manifest_mse = ModelBundle.load(bundle).manifest.metrics["val_reconstruction_mse"]
    assert figures["val_reconstruction_mse"] == pytest.approx(manifest_mse, rel=0.05)
    assert figures["sharpness_real"] > figures["sharpness_reconstructions"] > 0


def test_learned_edits_join_the_bundle_and_move_codes_as_far_as_the_vectors_do(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    copy = shutil.copytree(trained[1], tmp_path / "bundle")
    guide, held_out = tmp_path / "guide", tmp_path / "held-out"
    common = ["--data", str(SUBSET), "--cache-dir", str(tmp_path / "cache"), "--guide-dir", str(guide)]
    edits = ["--steps", "20", "--guide-epochs", "1", "--set", "held_out_epochs=1", "--attributes", "Smiling", "Male"]
    edits += ["--held-out-dir", str(held_out), "--set", "held_out_seeds=[11]"]
    assert main(["edits", "--bundle", str(copy), *common, *edits]) == 0
    assert (guide / "classifier.json").is_file() and (held_out / "classifier.json").is_file()  # trained, then reused
    bundle = ModelBundle.load(copy)
    assert bundle.edited_by_editor == ["Smiling", "Male"]
    editor = bundle.manifest.editor
    assert editor is not None and editor.parity_max_abs_diff <= export.PARITY_TOLERANCE
    assert set(editor.training["held_out_success"]) == {"Smiling", "Male"}

    model = FaceModel.load(copy, threads=1)
    z = np.random.default_rng(0).standard_normal((6, bundle.z_dim)).astype(np.float32)
    smiling = bundle.attributes["Smiling"]
    edited = model.edit_codes(z, {"Smiling": 2.0})
    # Learned edits choose a direction per face but move as far as the class-mean move of the same strength, times
    # the length scale the held-out classifier chose (recorded in the manifest).
    length = 2.0 * smiling.step * editor.length_scales[0]
    np.testing.assert_allclose(np.linalg.norm(edited - z, axis=1), length, rtol=1e-4)
    assert not np.allclose(edited, z + 2.0 * smiling.step * smiling.unit, atol=1e-3)
    strip = model.edit(z[0], {"Male": 1.5}, steps=3)
    np.testing.assert_array_equal(strip[1], z[0])
