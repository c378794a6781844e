"""The ONNX graph rewrites (training/onnx_graph.py): each computes what it replaces and leaves alone what it does not
recognise, and the committed networks (the face detector's, the default bundle's) are the rewritten ones."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.core.bundle import DEFAULT_MODEL, ModelBundle
from service.core.face_models import FILES, MODELS_DIR
from service.core.sessions import open_session
from training.face_models import OPSET
from training.onnx_graph import (
    CHANNEL_BLOCK,
    prelu_as_relu,
    split_channel_padding,
    upsampling_as_resize,
    upsampling_into_convolution,
    widen_bottlenecks,
)

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


def _model(nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray], x_shape: list[int]) -> onnx.ModelProto:
    """x -> nodes -> y [1, 32, 6, 6], with the given constants."""
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 6, 6])],
        initializer=[numpy_helper.from_array(value.astype(np.float32), name) for name, value in constants.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _residual(pads: list[int]) -> onnx.ModelProto:
    """BlazeFace's widening residual: Relu(Pad(x) + Conv1x1(x)), x [1, 16, 6, 6], Pad by `pads`."""
    rng = np.random.default_rng(1)
    constants = {"w": rng.normal(size=(32, 16, 1, 1)), "b": rng.normal(size=32)}
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], name="conv"),
        helper.make_node("Pad", ["x", "pads"], ["padded"], name="pad"),
        helper.make_node("Add", ["padded", "conv"], ["sum"], name="add"),
        helper.make_node("Relu", ["sum"], ["y"], name="relu"),
    ]
    model = _model(nodes, constants, [1, 16, 6, 6])
    model.graph.initializer.append(numpy_helper.from_array(np.array(pads, dtype=np.int64), "pads"))
    return model


def _bottleneck(width: int) -> onnx.ModelProto:
    """Conv1x1(32 -> width) -> Relu -> depthwise 3x3 -> Conv1x1(width -> 32), as in BlazeFace, x [1, 32, 6, 6]."""
    rng = np.random.default_rng(2)
    constants = {
        "w1": rng.normal(size=(width, 32, 1, 1)),
        "b1": rng.normal(size=width),
        "wd": rng.normal(size=(width, 1, 3, 3)),
        "bd": rng.normal(size=width),
        "w2": rng.normal(size=(32, width, 1, 1)),
        "b2": rng.normal(size=32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["squeezed"], name="squeeze"),
        helper.make_node("Relu", ["squeezed"], ["active"], name="relu"),
        helper.make_node("Conv", ["active", "wd", "bd"], ["spread"], name="depthwise", group=width, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["spread", "w2", "b2"], ["y"], name="expand"),
    ]
    return _model(nodes, constants, [1, 32, 6, 6])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = open_session(model.SerializeToString())
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


def test_splitting_a_channel_padding_residual_computes_the_same() -> None:
    x = np.random.default_rng(0).normal(size=(1, 16, 6, 6)).astype(np.float32)
    original, rewritten = _residual([0, 0, 0, 0, 0, 16, 0, 0]), _residual([0, 0, 0, 0, 0, 16, 0, 0])
    assert split_channel_padding(rewritten) == 1
    onnx.checker.check_model(rewritten)
    op_types = [node.op_type for node in rewritten.graph.node]
    assert "Pad" not in op_types
    assert op_types.count("Conv") == 2
    assert "Concat" in op_types
    np.testing.assert_allclose(_run(rewritten, x), _run(original, x), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "pads",
    [[0, 0, 1, 1, 0, 0, 1, 1], [0, 16, 0, 0, 0, 0, 0, 0], [0, 8, 0, 0, 0, 8, 0, 0]],
    ids=["spatial", "channels-in-front", "channels-both-sides"],
)
def test_a_pad_that_does_not_append_channels_is_left_alone(pads: list[int]) -> None:
    model = _residual(pads)
    before = model.SerializeToString()
    assert split_channel_padding(model) == 0
    assert model.SerializeToString() == before


def test_widening_a_narrow_bottleneck_computes_the_same() -> None:
    x = np.random.default_rng(0).normal(size=(1, 32, 6, 6)).astype(np.float32)
    original, rewritten = _bottleneck(12), _bottleneck(12)
    assert widen_bottlenecks(rewritten) == 1
    onnx.checker.check_model(rewritten)
    depthwise = next(node for node in rewritten.graph.node if node.name == "depthwise")
    assert helper.get_attribute_value(next(a for a in depthwise.attribute if a.name == "group")) == CHANNEL_BLOCK
    np.testing.assert_allclose(_run(rewritten, x), _run(original, x), rtol=0, atol=1e-4)


def test_a_bottleneck_that_fills_its_blocks_is_left_alone() -> None:
    model = _bottleneck(CHANNEL_BLOCK)
    before = model.SerializeToString()
    assert widen_bottlenecks(model) == 0
    assert model.SerializeToString() == before


def test_the_committed_networks_are_the_rewritten_ones() -> None:
    """Each of these operators took the networks out of onnxruntime's blocked layout (PRelu alone was 59 % of Face
    Mesh's time): the service's copies must have none left, and BlazeFace's bottlenecks must fill their blocks."""
    for role, name in FILES.items():
        model = onnx.load(MODELS_DIR / name)
        op_types = {node.op_type for node in model.graph.node}
        assert not op_types & {"PRelu", "Pad"}, role
        assert {"Conv", "Add", "Concat"} <= op_types, role
    full_range = onnx.load(MODELS_DIR / FILES["full_range"])
    groups = [a.i for node in full_range.graph.node for a in node.attribute if a.name == "group" and a.i > 1]
    assert groups
    assert all(group % CHANNEL_BLOCK == 0 for group in groups)


def _upsampling_block(pads: list[int], readers: int = 1) -> onnx.ModelProto:
    """x [1, 8, 5, 7] -> Resize(nearest, x2) -> Conv 3 x 3 (16 filters, bias, `pads`) -> y; with `readers` = 2 the
    upsampled tensor is also an output of the graph."""
    rng = np.random.default_rng(2)
    constants = {"w": rng.normal(size=(16, 8, 3, 3)), "b": rng.normal(size=16), "scales": np.array([1, 1, 2, 2])}
    height, width = 10 + 2 - pads[0] - pads[2], 14 + 2 - pads[1] - pads[3]
    nodes = [
        helper.make_node(
            "Resize",
            ["x", "", "scales"],
            ["up"],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        helper.make_node("Conv", ["up", "w", "b"], ["y"], name="conv", kernel_shape=[3, 3], pads=pads),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, height, width])]
    if readers == 2:
        outputs.append(helper.make_tensor_value_info("up", TensorProto.FLOAT, [1, 8, 10, 14]))
    graph = helper.make_graph(
        nodes,
        "upsampling",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 7])],
        outputs,
        initializer=[numpy_helper.from_array(value.astype(np.float32), name) for name, value in constants.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def test_folding_an_upsampling_into_its_convolution_computes_the_same() -> None:
    original = _upsampling_block([1, 1, 1, 1])
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(original)
    assert upsampling_into_convolution(rewritten) == 1
    op_types = [node.op_type for node in rewritten.graph.node]
    assert op_types == ["Conv"] * 4 + ["Concat", "DepthToSpace"]
    kernels = [numpy_helper.to_array(t).shape for t in rewritten.graph.initializer if t.name.startswith("conv/")]
    assert kernels == [(16, 8, 2, 2)] * 4  # 4 taps a phase instead of 9: the point of the rewrite
    x = np.random.default_rng(3).normal(size=(1, 8, 5, 7)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x), _run(original, x), rtol=1e-5, atol=1e-5)  # outputs up to ~20


@pytest.mark.parametrize(("pads", "readers"), [([0, 0, 0, 0], 1), ([1, 1, 1, 1], 2)])
def test_an_upsampling_the_fold_does_not_cover_is_left_alone(pads: list[int], readers: int) -> None:
    """Unpadded convolutions see other windows, and a second reader still needs the upsampled tensor."""
    model = _upsampling_block(pads, readers)
    before = model.SerializeToString()
    assert upsampling_into_convolution(model) == 0
    assert model.SerializeToString() == before


def test_the_default_bundle_s_decoder_is_rewritten_and_its_encoder_has_nothing_to_rewrite() -> None:
    """tf2onnx's form of Keras's UpSampling2D (Tile, Transpose, Reshape and run-time shape arithmetic) took a fifth
    of the decoder's time, and each upsampling's 3 x 3 convolution 2.25x the multiply-adds of its sub-pixel form;
    the committed decoders (float32 and int8) must have neither left."""
    for bundle in (ModelBundle.load(DEFAULT_MODEL), ModelBundle.load(DEFAULT_MODEL.with_name("celeba-64-int8"))):
        op_types = [node.op_type for node in onnx.load(bundle.decoder_path).graph.node]
        assert op_types.count("DepthToSpace") == 4, bundle.decoder_path
        assert not {"Resize", "Tile", "Shape", "Unsqueeze"} & set(op_types), bundle.decoder_path
    encoder = onnx.load(ModelBundle.load(DEFAULT_MODEL).encoder_path)
    before = encoder.SerializeToString()
    assert upsampling_as_resize(encoder) + upsampling_into_convolution(encoder) == 0
    assert encoder.SerializeToString() == before
