"""A bundle's ONNX decoder as a differentiable TensorFlow function, so training can look through it without its
Keras checkpoint.

Learned edits (training/edits.py) are trained through the frozen decoder against an image classifier. The bundle
ships only ONNX (its Keras run folder may be gone: the default bundle's is), and onnxruntime gives no gradients, so
this evaluates the graph node by node with TensorFlow ops. Only the operators the exported decoders use are
implemented; anything else raises with the operator's name. Parity with onnxruntime is tested.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import tensorflow as tf
from onnx import numpy_helper

Tensor = tf.Tensor
Node = onnx.NodeProto


def _attributes(node: Node) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv(node: Node, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """ONNX Conv (NCHW, OIHW weights) as an NHWC TensorFlow convolution: TensorFlow's CPU kernels are NHWC only."""
    attrs = _attributes(node)
    if attrs.get("group", 1) != 1 or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise NotImplementedError(f"Conv {node.name}: groups and dilations are not supported")
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    strides = list(attrs.get("strides", [1, 1]))
    y = tf.nn.conv2d(
        tf.transpose(x, [0, 2, 3, 1]),
        tf.transpose(w, [2, 3, 1, 0]),
        strides=[1, *strides, 1],
        padding=[[0, 0], [top, bottom], [left, right], [0, 0]],
    )
    if b is not None:
        y = y + b
    return tf.transpose(y, [0, 3, 1, 2])


def _resize(node: Node, x: Tensor, _roi: Tensor | None = None, scales: Tensor | None = None) -> Tensor:
    """Nearest-neighbour upsampling by whole factors (what UpSampling2D exports as): each pixel repeated."""
    attrs = _attributes(node)
    if attrs.get("mode", b"nearest") != b"nearest" or scales is None:
        raise NotImplementedError(f"Resize {node.name}: only nearest by constant scales is supported")
    for axis, factor in enumerate(np.asarray(scales)):
        if factor != int(factor) or factor < 1:
            raise NotImplementedError(f"Resize {node.name}: scale {factor} is not a whole factor")
        if factor > 1:
            x = tf.repeat(x, int(factor), axis=axis)
    return x


def _reshape(node: Node, x: Tensor, shape: Tensor) -> Tensor:
    shape = np.asarray(shape).copy()
    if _attributes(node).get("allowzero", 0) == 0:
        zeros = np.flatnonzero(shape == 0)
        shape[zeros] = np.asarray(x.shape)[zeros]
    return tf.reshape(x, shape.tolist())


def _depth_to_space(node: Node, x: Tensor) -> Tensor:
    """ONNX DepthToSpace in DCR mode (NCHW) is TensorFlow's depth_to_space (NHWC)."""
    attrs = _attributes(node)
    if attrs.get("mode", b"DCR") != b"DCR":
        raise NotImplementedError(f"DepthToSpace {node.name}: only DCR mode is supported")
    y = tf.nn.depth_to_space(tf.transpose(x, [0, 2, 3, 1]), int(attrs["blocksize"]))
    return tf.transpose(y, [0, 3, 1, 2])


OPERATORS: dict[str, Callable[..., Tensor]] = {
    "Add": lambda node, a, b: a + b,
    "Mul": lambda node, a, b: a * b,
    "MatMul": lambda node, a, b: tf.matmul(a, b),
    "Relu": lambda node, x: tf.nn.relu(x),
    "LeakyRelu": lambda node, x: tf.nn.leaky_relu(x, alpha=_attributes(node).get("alpha", 0.01)),
    "Sigmoid": lambda node, x: tf.sigmoid(x),
    "Transpose": lambda node, x: tf.transpose(x, _attributes(node)["perm"]),
    "Reshape": _reshape,
    "Conv": _conv,
    "Resize": _resize,
    "Concat": lambda node, *xs: tf.concat(xs, axis=_attributes(node)["axis"]),
    "DepthToSpace": _depth_to_space,
}


class OnnxFunction:
    """An ONNX graph with one input and one output, evaluated with TensorFlow ops (gradients flow through it).

    Weights are constants: the graph is frozen, as the bundle's decoder must stay while edits learn around it.
    """

    def __init__(self, path: Path) -> None:
        graph = onnx.load(str(path)).graph
        if len(graph.input) != 1 or len(graph.output) != 1:
            raise ValueError(f"{path.name}: expected one input and one output")
        unsupported = sorted({n.op_type for n in graph.node} - OPERATORS.keys())
        if unsupported:
            raise NotImplementedError(f"{path.name}: operators {unsupported} are not implemented")
        self.input = graph.input[0].name
        self.output = graph.output[0].name
        self.nodes = list(graph.node)
        # Shapes and scales stay numpy (they are read, not differentiated); weights become float32 constants.
        self.constants: dict[str, np.ndarray | Tensor] = {}
        for initializer in graph.initializer:
            value = numpy_helper.to_array(initializer)
            self.constants[initializer.name] = tf.constant(value) if value.dtype == np.float32 else value

    def __call__(self, x: Tensor) -> Tensor:
        values: dict[str, np.ndarray | Tensor | None] = {**self.constants, self.input: x, "": None}
        for node in self.nodes:
            inputs = [values[name] for name in node.input]
            while inputs and inputs[-1] is None:  # trailing optional inputs left empty
                inputs.pop()
            values[node.output[0]] = OPERATORS[node.op_type](node, *inputs)
        return values[self.output]
