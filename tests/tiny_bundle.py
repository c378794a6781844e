"""A tiny but valid model bundle built with the `onnx` helper API, so service tests need no TensorFlow.

Image size 16, z_dim 8, linear encoder heads and a sigmoid linear decoder with fixed random weights:
meaningless faces, but every tensor name, shape and JSON file is what `ModelBundle.load` demands.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from service.core.bundle import (
    ATTRIBUTES_FILE,
    BATCH_DIM,
    DECODER_FILE,
    DECODER_INPUT,
    DECODER_OUTPUT,
    EDITOR_FILE,
    EDITOR_INPUTS,
    EDITOR_OUTPUT,
    ENCODER_FILE,
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    FORMAT_VERSION,
    HASHED_FILES,
    LATENT_STATS_FILE,
    MANIFEST_FILE,
    REPORT_FILE,
    ModelBundle,
    sha256_file,
    write_json,
)
from service.core.detection import DETECTOR_NAME

IMAGE_SIZE = 16
Z_DIM = 8
OPSET = 17
ATTRIBUTES = ("Smiling", "Male", "Eyeglasses")
CROP = (0.1, 0.15, 0.9, 0.85)
#: Eyes, nose and mouth corners where a CelebA crop has them, as fractions of the side.
LANDMARKS = [[0.34, 0.38], [0.66, 0.38], [0.5, 0.55], [0.37, 0.74], [0.63, 0.74]]


def _tensor(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def save_graph(graph: onnx.GraphProto, path: Path, check: bool = True) -> None:
    """Save `graph` as a model; `check=False` for graphs that are wrong on purpose."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    if check:
        onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _encoder(rng: np.random.Generator) -> onnx.GraphProto:
    pixels = IMAGE_SIZE * IMAGE_SIZE * 3
    weights = {
        "shape": np.array([-1, pixels], dtype=np.int64),
        "w_mean": rng.normal(0.0, 0.05, (pixels, Z_DIM)).astype(np.float32),
        "b_mean": rng.normal(0.0, 0.1, Z_DIM).astype(np.float32),
        "w_log_var": rng.normal(0.0, 0.01, (pixels, Z_DIM)).astype(np.float32),
        "b_log_var": np.full(Z_DIM, -1.0, dtype=np.float32),
    }
    z_mean, z_log_var = ENCODER_OUTPUTS
    nodes = [
        helper.make_node("Reshape", [ENCODER_INPUT, "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w_mean"], ["mean_mm"]),
        helper.make_node("Add", ["mean_mm", "b_mean"], [z_mean]),
        helper.make_node("MatMul", ["flat", "w_log_var"], ["log_var_mm"]),
        helper.make_node("Add", ["log_var_mm", "b_log_var"], [z_log_var]),
    ]
    return helper.make_graph(
        nodes,
        "tiny_encoder",
        [_tensor(ENCODER_INPUT, [BATCH_DIM, IMAGE_SIZE, IMAGE_SIZE, 3])],
        [_tensor(z_mean, [BATCH_DIM, Z_DIM]), _tensor(z_log_var, [BATCH_DIM, Z_DIM])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )


def _decoder(rng: np.random.Generator) -> onnx.GraphProto:
    pixels = IMAGE_SIZE * IMAGE_SIZE * 3
    weights = {
        "w": rng.normal(0.0, 1.0, (Z_DIM, pixels)).astype(np.float32),
        "b": rng.normal(0.0, 0.5, pixels).astype(np.float32),
        "shape": np.array([-1, IMAGE_SIZE, IMAGE_SIZE, 3], dtype=np.int64),
    }
    nodes = [
        helper.make_node("MatMul", [DECODER_INPUT, "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape"], [DECODER_OUTPUT]),
    ]
    return helper.make_graph(
        nodes,
        "tiny_decoder",
        [_tensor(DECODER_INPUT, [BATCH_DIM, Z_DIM])],
        [_tensor(DECODER_OUTPUT, [BATCH_DIM, IMAGE_SIZE, IMAGE_SIZE, 3])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )


def _attribute(name: str, rng: np.random.Generator) -> dict[str, object]:
    vector = rng.normal(0.0, 1.0, Z_DIM)
    return {
        "name": name,
        "vector": vector.tolist(),
        "method": "linear",
        "norm": float(np.linalg.norm(vector)),
        "step": 0.7,
        "projection_std": 0.5,
        "auc": 0.8,
        "positives": 40,
        "negatives": 60,
    }


def build_tiny_bundle(path: Path) -> Path:
    """Write the bundle into `path` (created if needed) and return it."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    save_graph(_encoder(rng), path / ENCODER_FILE)
    save_graph(_decoder(rng), path / DECODER_FILE)
    cholesky = np.tril(rng.normal(0.0, 0.2, (Z_DIM, Z_DIM)), -1) + np.diag(rng.uniform(0.5, 1.0, Z_DIM))
    write_json(
        path / LATENT_STATS_FILE,
        {
            "mean": rng.normal(0.0, 0.3, Z_DIM).tolist(),
            "std": np.sqrt((cholesky**2).sum(axis=1)).tolist(),
            "posterior_std": np.full(Z_DIM, 0.2).tolist(),
            "std_scalar": 0.2,
            "covariance_cholesky": cholesky.tolist(),
            "count": 100,
            "default_mode": "trick",
        },
    )
    write_json(path / ATTRIBUTES_FILE, [_attribute(name, rng) for name in ATTRIBUTES])
    Image.new("RGB", (4, 4), "gray").save(path / REPORT_FILE)
    write_json(
        path / MANIFEST_FILE,
        {
            "format_version": FORMAT_VERSION,
            "name": "tiny-test",
            "image_size": IMAGE_SIZE,
            "z_dim": Z_DIM,
            "preprocess": {
                "crop": list(CROP),
                "size": IMAGE_SIZE,
                "resample": "lanczos",
                "landmarks": LANDMARKS,
                "landmark_detector": DETECTOR_NAME,
            },
            "attributes": list(ATTRIBUTES),
            "training": {},
            "dataset": {},
            "metrics": {},
            "parity": {},
            "versions": {"onnx": onnx.__version__},
            "opset": OPSET,
            "files": {file: sha256_file(path / file) for file in HASHED_FILES},
        },
    )
    return path


def editor_graph(
    attributes: int, seed: int = 1, moves: np.ndarray | None = None, length_scales: np.ndarray | None = None
) -> onnx.GraphProto:
    """The editor's contract (docs/bundle-format.md) with a small bent correction: d = S @ M + tanh(S @ B) @ C,
    z' = z + |S @ (F M)| d / |d| for strengths S [N, attributes], class-mean moves M (random by default) and length
    scales F (1 by default): z itself at S = 0, as far as the scaled moves, and not a straight line."""
    rng = np.random.default_rng(seed)
    moves = rng.normal(0.0, 0.5, (attributes, Z_DIM)) if moves is None else moves
    scales = np.ones(attributes) if length_scales is None else length_scales
    weights = {
        "w": moves.astype(np.float32),
        "wf": (moves * scales[:, np.newaxis]).astype(np.float32),
        "b": rng.normal(0.0, 0.5, (attributes, 4)).astype(np.float32),
        "c": rng.normal(0.0, 0.5, (4, Z_DIM)).astype(np.float32),
        "eps": np.array(1e-6, np.float32),
    }
    z, strengths = EDITOR_INPUTS
    nodes = [
        helper.make_node("MatMul", [strengths, "w"], ["straight"]),
        helper.make_node("MatMul", [strengths, "b"], ["hidden"]),
        helper.make_node("Tanh", ["hidden"], ["bent"]),
        helper.make_node("MatMul", ["bent", "c"], ["correction"]),
        helper.make_node("Add", ["straight", "correction"], ["turned"]),
        helper.make_node("MatMul", [strengths, "wf"], ["lengthened"]),
        helper.make_node("ReduceL2", ["lengthened"], ["length"], axes=[1], keepdims=1),
        helper.make_node("ReduceL2", ["turned"], ["turned_length"], axes=[1], keepdims=1),
        helper.make_node("Add", ["turned_length", "eps"], ["safe_length"]),
        helper.make_node("Div", ["length", "safe_length"], ["scale"]),
        helper.make_node("Mul", ["turned", "scale"], ["move"]),
        helper.make_node("Add", [z, "move"], [EDITOR_OUTPUT]),
    ]
    return helper.make_graph(
        nodes,
        "tiny_editor",
        [_tensor(z, [BATCH_DIM, Z_DIM]), _tensor(strengths, [BATCH_DIM, attributes])],
        [_tensor(EDITOR_OUTPUT, [BATCH_DIM, Z_DIM])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )


def add_tiny_editor(path: Path, attributes: tuple[str, ...] = ("Smiling", "Eyeglasses")) -> Path:
    """Give the bundle at `path` an `editor.onnx` (`editor_graph`) for `attributes`, recorded in its manifest: the
    bundle's own class-mean moves, the second attribute's lengthened 1.5 times (the third's 2, ...)."""
    vectors = {v["name"]: v for v in json.loads((path / ATTRIBUTES_FILE).read_text(encoding="utf-8"))}
    moves = np.array([np.array(vectors[a]["vector"]) * vectors[a]["step"] / vectors[a]["norm"] for a in attributes])
    scales = 1.0 + 0.5 * np.arange(len(attributes))
    save_graph(editor_graph(len(attributes), moves=moves, length_scales=scales), path / EDITOR_FILE)
    manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    manifest["editor"] = {
        "attributes": list(attributes),
        "length_scales": scales.tolist(),
        "parity_max_abs_diff": 0.0,
        "training": {},
    }
    manifest["files"][EDITOR_FILE] = sha256_file(path / EDITOR_FILE)
    write_json(path / MANIFEST_FILE, manifest)
    ModelBundle.load(path)
    return path
