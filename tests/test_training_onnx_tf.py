"""The bundle's ONNX decoder evaluated with TensorFlow ops (training/onnx_tf.py): the same images as onnxruntime, and
gradients that reach the latent, which is what learned edits are trained with."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
from onnx import TensorProto, helper

from service.core.bundle import DECODER_INPUT, DECODER_OUTPUT, DEFAULT_MODEL, ModelBundle
from training.face_models import OPSET
from training.onnx_tf import OnnxFunction


def test_the_default_decoder_draws_what_onnxruntime_draws_and_passes_gradients_to_z() -> None:
    bundle = ModelBundle.load(DEFAULT_MODEL)
    z = np.random.default_rng(0).standard_normal((4, bundle.z_dim)).astype(np.float32)
    session = ort.InferenceSession(str(bundle.decoder_path), providers=["CPUExecutionProvider"])
    (expected,) = session.run([DECODER_OUTPUT], {DECODER_INPUT: z})
    decoder = OnnxFunction(bundle.decoder_path)
    np.testing.assert_allclose(decoder(tf.constant(z)).numpy(), expected, atol=1e-5)

    latent = tf.Variable(z)
    with tf.GradientTape() as tape:
        brightness = tf.reduce_mean(decoder(latent))
    gradient = tape.gradient(brightness, latent).numpy()
    assert gradient.shape == z.shape and np.all(np.isfinite(gradient)) and np.abs(gradient).max() > 0


def test_an_operator_it_does_not_implement_is_named(tmp_path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"])],
        "softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    path = tmp_path / "softmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), str(path))
    with pytest.raises(NotImplementedError, match="Softmax"):
        OnnxFunction(path)
