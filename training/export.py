"""From a trained run to a verified model bundle (see docs/bundle-format.md).

Export both halves with tf2onnx, prove onnxruntime reproduces TensorFlow, compute the latent
statistics and attribute vectors with the exported encoder (exactly what the service will run),
draw the report, and only then write the manifest with every file's sha256.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import shutil
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

from service.core.bundle import (
    ATTRIBUTES_FILE,
    BATCH_DIM,
    DECODER_FILE,
    DECODER_INPUT,
    DECODER_OUTPUT,
    ENCODER_FILE,
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    FORMAT_VERSION,
    HASHED_FILES,
    LATENT_STATS_FILE,
    MANIFEST_FILE,
    REPORT_FILE,
    ModelBundle,
    SamplingMode,
    sha256_file,
    write_json,
)
from service.core.detection import DETECTOR_NAME
from service.core.sessions import open_session
from training import template
from training.config import TrainConfig
from training.latents import aggregate_posterior, attribute_vectors
from training.model import VAE
from training.onnx_graph import upsampling_as_resize, upsampling_into_convolution
from training.prepared import PreparedData, preprocess_of
from training.report import draw_report

log = logging.getLogger(__name__)

OPSET = 17
PARITY_TOLERANCE = 1e-4
PARITY_BATCHES = (1, 16)
ENCODE_BATCH = 256


class ParityError(RuntimeError):
    """onnxruntime and TensorFlow disagree beyond the tolerance."""


def keras_to_onnx(model: keras.Model, input_names: tuple[str, ...], output_names: tuple[str, ...], path: Path) -> None:
    """Convert a functional Keras model; name the inputs, outputs and the dynamic batch dimension, and rewrite what
    onnxruntime runs slowly into the same function (`optimize_graph`)."""
    spec = tuple(
        tf.TensorSpec((None, *tensor.shape[1:]), tf.float32, name=name)
        for tensor, name in zip(model.inputs, input_names, strict=True)
    )
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    graph = proto.graph
    renames = {out.name: name for out, name in zip(graph.output, output_names, strict=True)}
    for node in graph.node:
        node.output[:] = [renames.get(o, o) for o in node.output]
        node.input[:] = [renames.get(i, i) for i in node.input]
    for value in [*graph.input, *graph.output]:
        value.name = renames.get(value.name, value.name)
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    optimize_graph(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def optimize_graph(proto: onnx.ModelProto) -> int:
    """The exported graph's rewrites (training.onnx_graph), in place; how many places changed."""
    return upsampling_as_resize(proto) + upsampling_into_convolution(proto)


def rewrite_graphs(bundle: Path) -> list[str]:
    """Bring an exported bundle's ONNX files to what this version exports (`optimize_graph`) in place, without the
    Keras model: each rewritten network must compute what the file did (at most PARITY_TOLERANCE apart on random
    inputs at every parity batch size) before it replaces the file; then the manifest's sums are updated and the
    bundle verified with the service's loader. Returns the files rewritten."""
    manifest_path = bundle / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    rng = np.random.default_rng(0)
    rewritten = []
    for name in (ENCODER_FILE, DECODER_FILE):
        path = bundle / name
        proto = onnx.load(str(path))
        if optimize_graph(proto) == 0:
            continue
        onnx.checker.check_model(proto)
        staging = path.with_name(path.name + ".partial")
        onnx.save(proto, str(staging))
        before, after = open_session(path), open_session(staging)
        source = before.get_inputs()[0]
        for batch in PARITY_BATCHES:
            x = rng.standard_normal((batch, *source.shape[1:])).astype(np.float32)
            if name == ENCODER_FILE:
                x = np.clip(x * 0.25 + 0.5, 0.0, 1.0)  # pixels in [0, 1]
            worst = max(
                float(np.abs(a - b).max())
                for a, b in zip(before.run(None, {source.name: x}), after.run(None, {source.name: x}), strict=True)
            )
            if not np.isfinite(worst) or worst > PARITY_TOLERANCE:
                staging.unlink()
                raise ParityError(f"{path}: the rewritten graph differs by {worst:.3g} at batch {batch}")
        staging.replace(path)
        manifest["files"][name] = sha256_file(path)
        rewritten.append(name)
        log.info("%s: rewritten, outputs unchanged (within %.0e)", name, PARITY_TOLERANCE)
    if rewritten:
        write_json(manifest_path, manifest)
    ModelBundle.load(bundle)
    return rewritten


def encode(session: ort.InferenceSession, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run the exported encoder over uint8 faces in batches: (z_mean, z_log_var)."""
    means, log_vars = [], []
    for start in range(0, len(images), ENCODE_BATCH):
        batch = images[start : start + ENCODE_BATCH].astype(np.float32) / 255.0
        z_mean, z_log_var = session.run(list(ENCODER_OUTPUTS), {ENCODER_INPUT: batch})
        means.append(z_mean)
        log_vars.append(z_log_var)
    return np.concatenate(means), np.concatenate(log_vars)


def decode(session: ort.InferenceSession, z: np.ndarray) -> np.ndarray:
    return session.run([DECODER_OUTPUT], {DECODER_INPUT: z.astype(np.float32)})[0]


def check_parity(vae: VAE, encoder: ort.InferenceSession, decoder: ort.InferenceSession, faces: np.ndarray) -> dict:
    """Max |ORT - TF| on real validation faces and random latents at each batch size; raise if too big."""
    rng = np.random.default_rng(0)
    figures: dict[str, dict[str, float]] = {"encoder": {}, "decoder": {}}
    for batch in PARITY_BATCHES:
        images = faces[:batch].astype(np.float32) / 255.0
        tf_mean, tf_log_var = (np.asarray(t) for t in vae.encoder(images, training=False))
        ort_mean, ort_log_var = encoder.run(list(ENCODER_OUTPUTS), {ENCODER_INPUT: images})
        figures["encoder"][f"batch_{batch}"] = float(
            max(np.abs(tf_mean - ort_mean).max(), np.abs(tf_log_var - ort_log_var).max())
        )
        z = np.concatenate([tf_mean, rng.standard_normal(tf_mean.shape).astype(np.float32)])
        tf_image = np.asarray(vae.decoder(z, training=False))
        figures["decoder"][f"batch_{batch}"] = float(np.abs(tf_image - decode(decoder, z)).max())
    worst = max(v for half in figures.values() for v in half.values())
    figures["max_abs_diff"] = worst
    figures["tolerance"] = PARITY_TOLERANCE
    if not np.isfinite(worst) or worst > PARITY_TOLERANCE:
        raise ParityError(f"onnxruntime differs from TensorFlow by {worst:.3g} > {PARITY_TOLERANCE}: {figures}")
    return figures


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
    }


def _move_into_place(staging: Path, out: Path) -> None:
    """Replace the bundle's own files in `out`, manifest last; a model card or figures kept beside them stay."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (*HASHED_FILES, MANIFEST_FILE):
        (staging / name).replace(out / name)
    staging.rmdir()


def build_bundle(config: TrainConfig, vae: VAE, data: PreparedData, training_summary: dict, out: Path) -> ModelBundle:
    """Write and verify a complete bundle at `out` (built and checked beside it, then moved into place)."""
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    log.info("exporting to ONNX (opset %d)", OPSET)
    keras_to_onnx(vae.encoder, (ENCODER_INPUT,), ENCODER_OUTPUTS, staging / ENCODER_FILE)
    keras_to_onnx(vae.decoder, (DECODER_INPUT,), (DECODER_OUTPUT,), staging / DECODER_FILE)
    encoder, decoder = open_session(staging / ENCODER_FILE), open_session(staging / DECODER_FILE)
    val_faces = data.images[data.val]
    parity = check_parity(vae, encoder, decoder, val_faces)
    log.info("parity ORT vs TF: max abs diff %.2e", parity["max_abs_diff"])

    log.info("encoding %d training and %d validation faces", len(data.train), len(data.val))
    z_train, z_train_log_var = encode(encoder, data.images[data.train])
    stats = aggregate_posterior(z_train, z_train_log_var, config.default_sampling)
    z_val, z_val_log_var = encode(encoder, val_faces)
    write_json(staging / LATENT_STATS_FILE, stats.model_dump())

    vectors, left_out = [], []
    if data.labels is not None:
        vectors, left_out = attribute_vectors(
            data.dataset.attribute_names,
            z_train,
            data.labels[data.train],
            z_val,
            data.labels[data.val],
            config.min_positives,
            config.direction_method,
        )
        log.info("%d attribute vectors kept, %d left out", len(vectors), len(left_out))
    else:
        log.warning("no attribute labels: the bundle has no attribute vectors")
    write_json(staging / ATTRIBUTES_FILE, [v.model_dump() for v in vectors])

    reconstructions = np.concatenate(
        [decode(decoder, z_val[i : i + ENCODE_BATCH]) for i in range(0, len(z_val), ENCODE_BATCH)]
    )
    val_mse = float(np.mean((reconstructions - val_faces.astype(np.float32) / 255.0) ** 2))
    val_kl = float(np.mean(-0.5 * np.sum(1 + z_val_log_var - z_val**2 - np.exp(z_val_log_var), axis=1)))
    rng = np.random.default_rng(config.seed)
    eps = rng.standard_normal((8, config.z_dim)).astype(np.float32)
    draw_report(
        staging / REPORT_FILE,
        history=training_summary["history"],
        inputs=val_faces[:8],
        reconstructions=reconstructions[:8],
        prior=decode(decoder, stats.draw(eps, SamplingMode.PRIOR)),
        trick=decode(decoder, stats.draw(eps, SamplingMode.TRICK)),
        title=f"{config.name}: validation MSE {val_mse:.4f}, KL {val_kl:.1f} nats",
    )

    landmarks = template.measure(data, preprocess_of(config))
    history = training_summary["history"]
    best = int(np.argmin(history["val_reconstruction_loss"])) if history.get("val_reconstruction_loss") else None
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": config.name,
        "image_size": config.image_size,
        "z_dim": config.z_dim,
        "preprocess": {
            **preprocess_of(config).model_dump(),
            "landmarks": landmarks,
            "landmark_detector": DETECTOR_NAME,
        },
        "attributes": [v.name for v in vectors],
        "attributes_left_out": left_out,
        "training": {
            **config.model_dump(),
            "epochs_trained": training_summary["epochs"],
            "best_epoch": None if best is None else best + 1,
            "seconds": round(training_summary["seconds"], 1),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "dataset": data.describe(),
        "metrics": {
            "val_reconstruction_mse": val_mse,
            "val_reconstruction_mse_note": "per pixel and channel on the [0, 1] scale, decoding z_mean",
            "val_kl": val_kl,
            "val_kl_note": "nats per image, summed over latent dimensions",
        },
        "parity": parity,
        "versions": _versions(),
        "opset": OPSET,
        "files": {name: sha256_file(staging / name) for name in HASHED_FILES},
    }
    write_json(staging / MANIFEST_FILE, manifest)
    bundle = ModelBundle.load(staging)
    _move_into_place(staging, out)
    log.info("bundle written to %s (val MSE %.5f, KL %.1f)", out, val_mse, val_kl)
    return dataclasses.replace(bundle, path=out)
