"""`python -m training quantize`: an int8 sibling bundle the loader accepts, and a loader that checks the precision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.core.bundle import DECODER_FILE, MANIFEST_FILE, BundleError, ModelBundle, sha256_file, write_json
from service.core.runtime import FaceModel
from tests.tiny_bundle import IMAGE_SIZE
from training.quantize import quantize_bundle


@pytest.fixture(scope="module")
def int8_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (48, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    out = tmp_path_factory.mktemp("quantized") / "tiny-int8"
    quantize_bundle(tiny_bundle, out, faces[:32], faces[32:], faces=32, codes=32)
    return out


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST_FILE).read_text(encoding="utf-8"))


def test_quantize_writes_a_verified_int8_sibling_and_leaves_the_source_alone(
    tiny_bundle: Path, int8_bundle: Path
) -> None:
    source = ModelBundle.load(tiny_bundle)
    bundle = ModelBundle.load(int8_bundle)
    assert source.precision == "float32" and source.manifest.quantization is None
    assert bundle.precision == "int8"
    assert bundle.name == f"{source.name}-int8"
    quantization = bundle.manifest.quantization
    assert quantization is not None
    assert quantization.calibration.faces == 32
    assert quantization.calibration.code_sources == {"aggregate_posterior_sampler": 32, "encoded_training_faces": 32}
    assert quantization.source["decoder.onnx"] == source.manifest.files["decoder.onnx"]
    assert set(quantization.deviation) >= {"decoder_mse_same_codes", "reconstruction_mse_int8"}
    assert bundle.latent_stats.mean == source.latent_stats.mean
    assert not (int8_bundle.parent / "tiny-int8.partial").exists()


def test_the_int8_bundle_serves_faces_close_to_float32(tiny_bundle: Path, int8_bundle: Path) -> None:
    z = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    float32 = FaceModel.load(tiny_bundle, threads=1).decode(z).astype(np.float32)
    int8 = FaceModel.load(int8_bundle, threads=1).decode(z).astype(np.float32)
    assert np.abs(float32 - int8).mean() < 8  # of 255: the same faces, quantized


def test_an_int8_bundle_cannot_be_quantized_again(int8_bundle: Path, tmp_path: Path) -> None:
    faces = np.zeros((4, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="already int8"):
        quantize_bundle(int8_bundle, tmp_path / "again", faces, faces)


def test_a_precision_the_graphs_contradict_is_refused(tiny_bundle: Path, int8_bundle: Path, tmp_path: Path) -> None:
    # A float32 manifest over a quantized decoder ...
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_bundle, mixed)
    shutil.copy2(int8_bundle / DECODER_FILE, mixed / DECODER_FILE)
    manifest = _manifest(mixed)
    manifest["files"][DECODER_FILE] = sha256_file(mixed / DECODER_FILE)
    write_json(mixed / MANIFEST_FILE, manifest)
    with pytest.raises(BundleError, match=r"decoder\.onnx: has QuantizeLinear/DequantizeLinear nodes, but"):
        ModelBundle.load(mixed)
    # ... and an int8 manifest without its quantization record.
    bare = tmp_path / "bare"
    shutil.copytree(int8_bundle, bare)
    manifest = _manifest(bare)
    del manifest["quantization"]
    write_json(bare / MANIFEST_FILE, manifest)
    with pytest.raises(BundleError, match="precision int8 needs a quantization section"):
        ModelBundle.load(bare)


def test_the_committed_int8_bundle_is_quantized_from_the_committed_float32_one() -> None:
    """`make quantize` again whenever models/celeba-64's networks change."""
    models = Path(__file__).resolve().parents[1] / "models"
    if not (models / "celeba-64-int8").is_dir():
        pytest.skip("no committed int8 bundle")
    int8, float32 = ModelBundle.load(models / "celeba-64-int8"), ModelBundle.load(models / "celeba-64")
    assert int8.manifest.quantization is not None
    for name in ("encoder.onnx", "decoder.onnx"):
        assert int8.manifest.quantization.source[name] == float32.manifest.files[name], f"run `make quantize`: {name}"
