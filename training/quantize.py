"""INT8 sibling bundles: `python -m training quantize --bundle B --out B-int8`.

onnxruntime's static quantization (`onnxruntime.quantization.quantize_static`) in QDQ format: weights int8 per
output channel (symmetric, 7-bit: see WEIGHTS), activations uint8 per tensor with ranges measured (MinMax) on
calibration data from the TRAINING split only: the encoder on training faces, the decoder on codes drawn by the
bundle's aggregate-posterior sampler (`/sample`'s trick mode at T = 1) plus the float32 encoder's codes of the same
faces (what `/encode`, `/decode` and `/edit` feed it). The latent statistics and attribute vectors are the
float32 bundle's, unchanged: the quantized networks approximate the same model.

The result is a complete bundle beside the source (never the source itself): the manifest says `precision: int8`
and records the calibration, the float32 source's network sums, and how far int8 moves from float32 on validation
faces (`quantization.deviation`); `ModelBundle.load` refuses a manifest whose precision the graphs contradict.

No TensorFlow here: the CLI prepares the faces (training.prepared), the tests pass arrays.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from service.core.bundle import (
    ATTRIBUTES_FILE,
    DECODER_FILE,
    DECODER_INPUT,
    DECODER_OUTPUT,
    EDITOR_FILE,
    ENCODER_FILE,
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    LATENT_STATS_FILE,
    MANIFEST_FILE,
    REPORT_FILE,
    ModelBundle,
    SamplingMode,
    sha256_file,
    write_json,
)
from service.core.sessions import open_session

log = logging.getLogger(__name__)

CALIBRATION_FACES = 256
CALIBRATION_CODES = 256
CALIBRATION_BATCH = 16
DEVIATION_FACES = 256
#: 7-bit weights in int8 (`reduce_range`): AVX2 without VNNI multiplies uint8 by int8 with vpmaddubsw, whose int16
#: pair sums saturate with full-range weights; measured on this encoder, full range moved z_mean by 0.18 of the
#: codes' spread against 0.03 reduced, at the same speed, and the result would differ by CPU.
WEIGHTS = "int8 holding 7-bit values (reduce_range), per output channel, symmetric"
METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


class _Batches(CalibrationDataReader):
    """Feeds one input in batches of CALIBRATION_BATCH to the calibrator."""

    def __init__(self, name: str, data: np.ndarray) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(
            {name: data[start : start + CALIBRATION_BATCH]} for start in range(0, len(data), CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _run(session: ort.InferenceSession, outputs: list[str], name: str, data: np.ndarray) -> list[np.ndarray]:
    """session.run over `data` in batches, outputs concatenated."""
    parts = [session.run(outputs, {name: data[i : i + 64]}) for i in range(0, len(data), 64)]
    return [np.concatenate([part[k] for part in parts]) for k in range(len(outputs))]


def quantize_network(source: Path, target: Path, input_name: str, calibration: np.ndarray, method: str) -> None:
    """One network, float32 ONNX to QDQ int8 (ORT's pre-processing first: shape inference and graph fusions)."""
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(target),
            _Batches(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=METHODS[method],
            reduce_range=True,
        )
    onnx.checker.check_model(str(target))


def calibration_data(
    bundle: ModelBundle, train_faces: np.ndarray, faces: int, codes: int, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Encoder images [faces, H, W, 3] in [0, 1] (a seeded draw of training faces) and decoder codes: `codes` draws of
    the aggregate-posterior sampler plus the float32 encoder's z_mean of those faces; and where the codes came from."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(train_faces), size=min(faces, len(train_faces)), replace=False)
    images = train_faces[np.sort(chosen)].astype(np.float32) / np.float32(255.0)
    eps = rng.standard_normal((codes, bundle.z_dim), dtype=np.float32)
    drawn = bundle.latent_stats.draw(eps, SamplingMode.TRICK)
    encoder = open_session(bundle.encoder_path, threads=0)
    (encoded,) = _run(encoder, [ENCODER_OUTPUTS[0]], ENCODER_INPUT, images)
    sources = {"aggregate_posterior_sampler": len(drawn), "encoded_training_faces": len(encoded)}
    return images, np.concatenate([drawn, encoded]).astype(np.float32), sources


def deviation(float32: ModelBundle, int8_dir: Path, val_faces: np.ndarray) -> dict[str, Any]:
    """How far the int8 networks are from the float32 ones on validation faces (none were calibrated on)."""
    images = val_faces[:DEVIATION_FACES].astype(np.float32) / np.float32(255.0)
    fp_enc, fp_dec = open_session(float32.encoder_path), open_session(float32.decoder_path)
    q_enc, q_dec = open_session(int8_dir / ENCODER_FILE), open_session(int8_dir / DECODER_FILE)
    (fp_z,) = _run(fp_enc, [ENCODER_OUTPUTS[0]], ENCODER_INPUT, images)
    (q_z,) = _run(q_enc, [ENCODER_OUTPUTS[0]], ENCODER_INPUT, images)
    (fp_faces,) = _run(fp_dec, [DECODER_OUTPUT], DECODER_INPUT, fp_z)
    (q_faces_same_z,) = _run(q_dec, [DECODER_OUTPUT], DECODER_INPUT, fp_z)
    (q_faces,) = _run(q_dec, [DECODER_OUTPUT], DECODER_INPUT, q_z)
    spread = float(np.sqrt(np.mean(np.var(fp_z, axis=0))))
    return {
        "faces": len(images),
        "encoder_z_mean_rms_diff": float(np.sqrt(np.mean((q_z - fp_z) ** 2))),
        "encoder_z_mean_rms_diff_over_spread": float(np.sqrt(np.mean((q_z - fp_z) ** 2)) / spread),
        "decoder_mse_same_codes": float(np.mean((q_faces_same_z - fp_faces) ** 2)),
        "decoder_max_abs_diff_same_codes": float(np.abs(q_faces_same_z - fp_faces).max()),
        "reconstruction_mse_float32": float(np.mean((fp_faces - images) ** 2)),
        "reconstruction_mse_int8": float(np.mean((q_faces - images) ** 2)),
    }


def quantize_bundle(
    source: Path,
    out: Path,
    train_faces: np.ndarray,
    val_faces: np.ndarray,
    *,
    faces: int = CALIBRATION_FACES,
    codes: int = CALIBRATION_CODES,
    method: str = "minmax",
    seed: int = 0,
) -> ModelBundle:
    """Write `out`, the int8 sibling of the float32 bundle `source`, built beside it and verified before it moves in;
    `train_faces` calibrate, `val_faces` measure the deviation (uint8 [N, size, size, 3] each)."""
    bundle = ModelBundle.load(source)
    if bundle.precision != "float32":
        raise ValueError(f"{source} is already {bundle.precision}; quantize its float32 source")
    if Path(out).resolve() == Path(source).resolve():
        raise ValueError("--out must be a new folder: the float32 bundle stays as it is")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    images, latents, code_sources = calibration_data(bundle, train_faces, faces, codes, seed)
    log.info("calibrating on %d training faces and %d codes (%s)", len(images), len(latents), method)
    quantize_network(bundle.encoder_path, staging / ENCODER_FILE, ENCODER_INPUT, images, method)
    quantize_network(bundle.decoder_path, staging / DECODER_FILE, DECODER_INPUT, latents, method)
    # The editor is a small float MLP on codes (no convolutions to gain from): copied as it is.
    copied = (LATENT_STATS_FILE, ATTRIBUTES_FILE, REPORT_FILE, *([EDITOR_FILE] if bundle.manifest.editor else []))
    for name in copied:
        shutil.copy2(bundle.path / name, staging / name)
    measured = deviation(bundle, staging, val_faces)
    log.info("int8 against float32 on %d validation faces: %s", measured["faces"], measured)

    manifest = bundle.manifest.model_dump(mode="json")
    manifest["name"] = f"{bundle.name}-int8"
    manifest["precision"] = "int8"
    manifest["metrics"] = {**manifest["metrics"], "val_reconstruction_mse": measured["reconstruction_mse_int8"]}
    manifest["versions"] = {**manifest["versions"], "onnxruntime_quantization": ort.__version__}
    manifest["quantization"] = {
        "format": "qdq",
        "weights": WEIGHTS,
        "activations": "uint8, per tensor",
        "calibration": {
            "method": method,
            "faces": len(images),
            "codes": len(latents),
            "code_sources": code_sources,
            "seed": seed,
        },
        "source": {
            "name": bundle.name,
            ENCODER_FILE: bundle.manifest.files[ENCODER_FILE],
            DECODER_FILE: bundle.manifest.files[DECODER_FILE],
        },
        "deviation": measured,
        "tool": f"onnxruntime.quantization {ort.__version__}",
    }
    manifest["files"] = {name: sha256_file(staging / name) for name in bundle.manifest.hashed_files}
    write_json(staging / MANIFEST_FILE, manifest)
    ModelBundle.load(staging)

    out.mkdir(parents=True, exist_ok=True)
    for name in (*bundle.manifest.hashed_files, MANIFEST_FILE):
        (staging / name).replace(out / name)
    staging.rmdir()
    return ModelBundle.load(out)
