"""The face detector's ONNX rebuild (training/face_models.py): the PRelu rewrite computes PRelu, and the committed
Face Mesh is the rewritten one."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.face_models import FILES, MODELS_DIR
from training.face_models import OPSET, prelu_as_relu

#: Slopes of every kind the rewrite must handle: negative, zero, between 0 and 1, one, above one.
SLOPES = np.array([-0.7, 0.0, 0.25, 1.0, 1.5], dtype=np.float32).reshape(1, 5, 1, 1)


def _prelu_model(slope_from_graph: bool = False) -> onnx.ModelProto:
    """x [1, 5, 4, 4] -> PRelu(x, slope) -> y, the slope a constant, or computed by a node when asked."""
    slope = numpy_helper.from_array(SLOPES, "slope")
    nodes = [helper.make_node("PRelu", ["x", "slope_used"], ["y"], name="activation")]
    if slope_from_graph:
        nodes.insert(0, helper.make_node("Identity", ["slope"], ["slope_used"]))
    else:
        slope.name = "slope_used"
    graph = helper.make_graph(
        nodes,
        "prelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 4, 4])],
        initializer=[slope],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_the_rewrite_computes_prelu_for_every_kind_of_slope() -> None:
    x = np.random.default_rng(0).normal(0.0, 2.0, (1, 5, 4, 4)).astype(np.float32)
    original = _prelu_model()
    rewritten = _prelu_model()
    assert prelu_as_relu(rewritten) == 1
    onnx.checker.check_model(rewritten)
    assert "PRelu" not in {node.op_type for node in rewritten.graph.node}
    expected = np.where(x > 0, x, SLOPES * x)
    np.testing.assert_allclose(_run(original, x), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(_run(rewritten, x), expected, rtol=0, atol=1e-5)


def test_the_rewrite_refuses_a_slope_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="not a constant"):
        prelu_as_relu(_prelu_model(slope_from_graph=True))


def test_the_committed_face_mesh_is_the_rewritten_one() -> None:
    """onnxruntime's CPU PRelu took 59 % of Face Mesh's time: the service's copy must not have any left."""
    model = onnx.load(MODELS_DIR / FILES["mesh"])
    op_types = {node.op_type for node in model.graph.node}
    assert "PRelu" not in op_types
    assert {"Relu", "Mul", "Add", "Conv"} <= op_types
