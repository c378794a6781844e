"""Rewrites of exported ONNX graphs into the same functions in operators onnxruntime's CPU provider runs fast.

onnxruntime runs convolutions in a blocked channel layout (NCHWc) and fuses additions and activations into them,
but only while every operator on the way has a blocked kernel and every channel count fills its blocks; anything
else makes it leave the layout and come back, with a reorder each way. Each rewrite here removes one such cause
from the networks this project exports (training/export.py) or converts (training/face_models.py), computes what it
replaces (up to float rounding, most exactly), and returns how many places it rewrote. docs/benchmarks.md has the
measurements. No TensorFlow here: the graphs are plain `onnx` protobufs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: onnxruntime's blocked layout keeps channels in blocks of 8 (AVX2) or 16 (AVX-512): a convolution whose channel
#: count is not a multiple of its block reads or writes the plain layout, with a reorder on either side.
CHANNEL_BLOCK = 16


def prelu_as_relu(model: onnx.ModelProto) -> int:
    """Rewrite every PRelu(y, slope) of `model` as Relu(y) * (1 - slope) + y * slope, in place; returns how many.

    The same function up to float rounding (4e-5 at most on Face Mesh's outputs, landmarks in pixels of 192), but
    onnxruntime's CPU PRelu is a slow broadcasting kernel outside the blocked (NCHWc) layout of its convolutions,
    which it leaves and re-enters around each one: on one core it took 59 % of Face Mesh's time, and the rewritten
    network runs about 2.7x faster (1.4-2.3 against 4.4-5.3 ms on one thread, four interleaved rounds; see "Face
    Mesh without PRelu" in docs/benchmarks.md). Of the exact rewrites, max(y, 0) + slope * min(y, 0) ran at 2 ms."""
    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    nodes, rewritten = [], 0
    for index, node in enumerate(graph.node):
        if node.op_type != "PRelu":
            nodes.append(node)
            continue
        value, slope = node.input
        if slope not in constants:
            raise ValueError(f"PRelu {node.name!r}: its slope {slope!r} is not a constant of the graph")
        name = f"{node.name or 'prelu'}.{index}"
        complement = numpy_helper.from_array(
            (1 - numpy_helper.to_array(constants[slope])).astype(np.float32), f"{name}/one_minus_slope"
        )
        graph.initializer.append(complement)
        nodes += [
            helper.make_node("Relu", [value], [f"{name}/relu"]),
            helper.make_node("Mul", [f"{name}/relu", complement.name], [f"{name}/relu_part"]),
            helper.make_node("Mul", [value, slope], [f"{name}/slope_part"]),
            helper.make_node("Add", [f"{name}/relu_part", f"{name}/slope_part"], list(node.output), name=node.name),
        ]
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def split_channel_padding(model: onnx.ModelProto) -> int:
    """Rewrite every residual Add(Pad(skip), Conv(x)) whose Pad only appends zero channels as
    Concat(Add(skip, Conv_a(x)), Conv_b(x)), the Conv's filters split where the skip's channels end; in place;
    returns how many.

    The same function (the appended channels were zeros), but onnxruntime has no blocked kernel for a Pad, so each
    one took the rest of the network out of its NCHWc layout: after BlazeFace's first such block every residual Add
    and Relu ran unfused in the plain layout, with reorders around each convolution (a fifth of its time), and
    Face Mesh's rewritten PRelus likewise. Split, the Add fuses into Conv_a and the Concat stays blocked."""
    graph = model.graph
    nodes = list(graph.node)  # held, so that their ids below stay theirs
    constants = {tensor.name: tensor for tensor in graph.initializer}
    producer, readers = _producers(nodes), _readers(nodes)
    replaced: dict[int, list[onnx.NodeProto]] = {}  # id of a node -> the nodes that take its place
    for add in nodes:
        if add.op_type != "Add":
            continue
        for pad_output, conv_output in (add.input, add.input[::-1]):
            pad, conv = producer.get(pad_output), producer.get(conv_output)
            if pad is None or conv is None or pad.op_type != "Pad" or conv.op_type != "Conv":
                continue
            extra = _appended_channels(pad, constants)
            if extra is None or len(readers[pad_output]) != 1 or len(readers[conv_output]) != 1 or len(conv.input) < 3:
                continue
            weights, bias = (numpy_helper.to_array(constants[name]) for name in conv.input[1:3])
            kept = weights.shape[0] - extra
            parts = []
            for part, rows in (("skip", slice(0, kept)), ("appended", slice(kept, None))):
                names = [f"{conv.name}/{part}/{kind}" for kind in ("weights", "bias", "output")]
                graph.initializer.extend(
                    [numpy_helper.from_array(weights[rows], names[0]), numpy_helper.from_array(bias[rows], names[1])]
                )
                parts.append(helper.make_node("Conv", [conv.input[0], *names[:2]], [names[2]], name=names[2]))
                parts[-1].attribute.extend(conv.attribute)
            total = f"{add.name or conv.name}/skip_sum"
            replaced[id(pad)] = []
            replaced[id(conv)] = parts
            replaced[id(add)] = [
                helper.make_node("Add", [pad.input[0], parts[0].output[0]], [total], name=total),
                helper.make_node("Concat", [total, parts[1].output[0]], list(add.output), name=add.name, axis=1),
            ]
            break
    rewritten = [new for node in nodes for new in replaced.get(id(node), [node])]
    del graph.node[:]
    graph.node.extend(rewritten)
    _drop_unused_constants(graph)
    return len(replaced) // 3


def widen_bottlenecks(model: onnx.ModelProto, block: int = CHANNEL_BLOCK) -> int:
    """Widen every bottleneck Conv -> Relu -> depthwise Conv -> Conv whose width is not a multiple of `block` to the
    next multiple with zero channels (zero filters and biases in, zero weights out); in place; returns how many.

    The same function (the added channels stay 0 through the Relu and add nothing), but BlazeFace's bottlenecks of
    8, 12, 24 and 36 channels do not fill onnxruntime's channel blocks, so the convolutions around them left its
    blocked layout; widened, the whole network runs blocked, and the extra multiplications cost less than the
    reorders did."""
    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    producer, readers = _producers(graph.node), _readers(graph.node)

    def group(node: onnx.NodeProto) -> int:
        return _attribute(node, "group", 1)

    def replace(node: onnx.NodeProto, index: int, values: np.ndarray) -> None:
        name = f"{node.name}/widened/{index}"  # a copy: tf2onnx shares equal constants between nodes
        graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), name))
        node.input[index] = name

    widened = 0
    for depthwise in graph.node:
        if depthwise.op_type != "Conv":
            continue
        width = group(depthwise)
        relu = producer.get(depthwise.input[0])
        squeeze = producer.get(relu.input[0]) if relu is not None and relu.op_type == "Relu" else None
        expand = readers.get(depthwise.output[0], [])
        if (
            width == 1
            or width % block == 0
            or squeeze is None
            or squeeze.op_type != "Conv"
            or group(squeeze) != 1
            or len(readers[squeeze.output[0]]) != 1
            or len(readers[relu.output[0]]) != 1
            or len(expand) != 1
            or expand[0].op_type != "Conv"
            or group(expand[0]) != 1
            or any(len(node.input) < 3 for node in (squeeze, depthwise))
        ):
            continue
        extra = -width % block
        for node in (squeeze, depthwise):
            weights, bias = (numpy_helper.to_array(constants[name]) for name in node.input[1:3])
            replace(node, 1, np.concatenate([weights, np.zeros((extra, *weights.shape[1:]), np.float32)]))
            replace(node, 2, np.concatenate([bias, np.zeros(extra, np.float32)]))
        weights = numpy_helper.to_array(constants[expand[0].input[1]])
        zeros = np.zeros((weights.shape[0], extra, *weights.shape[2:]), np.float32)
        replace(expand[0], 1, np.concatenate([weights, zeros], axis=1))
        next(a for a in depthwise.attribute if a.name == "group").i = width + extra
        widened += 1
    _drop_unused_constants(graph)
    return widened


def upsampling_as_resize(model: onnx.ModelProto) -> int:
    """Rewrite every nearest-neighbour upsampling that tf2onnx exports from Keras's `UpSampling2D` (two `tf.repeat`s:
    Unsqueeze, Tile, Transpose and Reshape for each axis, with the shapes computed at run time by Shape, Gather,
    Slice, Cast and Concat) as one Resize(nearest, asymmetric, floor) by the same factors; in place; returns how
    many. Exactly the same function (both copy pixels), but the tf2onnx form leaves the blocked layout twice per
    upsampling and took a fifth of the decoder's time (0.9 of 3.0 ms); Resize has a blocked kernel."""
    graph = model.graph
    nodes = list(graph.node)  # held, so that their ids below stay theirs
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    producer = _producers(nodes)

    def back(name: str, op_type: str) -> onnx.NodeProto | None:
        node = producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def perm(node: onnx.NodeProto) -> list[int]:
        return list(_attribute(node, "perm", ()))

    def inserts_axis_3(node: onnx.NodeProto | None) -> bool:
        return node is not None and node.input[1] in constants and constants[node.input[1]].tolist() == [3]

    def repeats(tile: onnx.NodeProto) -> int | None:
        values = constants.get(tile.input[1])
        if values is None or len(values) != 5 or values.tolist()[:3] != [1, 1, 1] or values[4] != 1:
            return None
        return int(values[3])

    replaced: dict[int, onnx.NodeProto] = {}
    for last in nodes:  # ... -> Reshape -> Transpose to NCHW, the end of the second repeat
        if last.op_type != "Transpose" or perm(last) != [0, 3, 1, 2]:
            continue
        chain, name = [], last.input[0]
        for op_type in ("Reshape", "Tile", "Unsqueeze", "Reshape", "Transpose", "Tile", "Unsqueeze"):
            node = back(name, op_type)
            if node is None:
                break
            chain.append(node)
            name = node.input[0]
        if len(chain) < 7:
            continue
        _, width_tile, width_axis, _, to_nhwc, height_tile, height_axis = chain
        factors = repeats(height_tile), repeats(width_tile)
        if (
            None in factors
            or not (inserts_axis_3(height_axis) and inserts_axis_3(width_axis))
            or perm(to_nhwc) != [0, 2, 3, 4, 1]
        ):
            continue
        scales = f"{last.name}/scales"
        graph.initializer.append(numpy_helper.from_array(np.array([1, 1, *factors], np.float32), scales))
        replaced[id(last)] = helper.make_node(
            "Resize",
            [height_axis.input[0], "", scales],
            list(last.output),
            name=last.name,
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )
    del graph.node[:]
    graph.node.extend(replaced.get(id(node), node) for node in nodes)
    _drop_dead_nodes(graph)
    _drop_unused_constants(graph)
    return len(replaced)


def upsampling_into_convolution(model: onnx.ModelProto) -> int:
    """Rewrite every Resize(nearest, x2) read only by a 3 x 3 convolution (stride 1, pads 1) as four 2 x 2
    convolutions of the low-resolution input, one per output phase, interleaved by DepthToSpace; in place; returns
    how many.

    The same function up to float rounding (the sub-pixel form): an output pixel at (2i + a, 2j + b) of the
    convolution sees only rows i - 1 + a .. i + a and columns j - 1 + b .. j + b of the input, its 3 x 3 taps summed
    into 2 x 2 by which input pixel they read. Each phase costs 4 multiply-adds per channel pair instead of 9, so
    the convolutions that follow the decoder's upsamplings (most of its multiply-adds) need 2.25x fewer."""
    graph = model.graph
    nodes = list(graph.node)  # held, so that their ids below stay theirs
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    readers, outputs = _readers(nodes), {value.name for value in graph.output}
    replaced: dict[int, list[onnx.NodeProto]] = {}
    dropped: set[int] = set()
    for resize in nodes:
        if resize.op_type != "Resize" or _attribute(resize, "mode", b"nearest") != b"nearest":
            continue
        scales = constants.get(resize.input[2]) if len(resize.input) > 2 else None
        if scales is None or scales.tolist() != [1, 1, 2, 2]:
            continue
        (conv, *others) = readers.get(resize.output[0], [None])
        if conv is None or others or resize.output[0] in outputs or conv.op_type != "Conv":
            continue
        if conv.input[1] not in constants:
            continue
        kernel = constants[conv.input[1]]
        if (
            kernel.shape[2:] != (3, 3)
            or list(_attribute(conv, "pads", [0, 0, 0, 0])) != [1, 1, 1, 1]
            or list(_attribute(conv, "strides", [1, 1])) != [1, 1]
            or list(_attribute(conv, "dilations", [1, 1])) != [1, 1]
            or _attribute(conv, "group", 1) != 1
        ):
            continue
        name = conv.name or conv.output[0]
        phases, new = [], []
        for a in (0, 1):
            for b in (0, 1):
                small = _phase_kernel(kernel, a, b)
                weights = f"{name}/phase{a}{b}"
                graph.initializer.append(numpy_helper.from_array(small, weights))
                output = f"{name}/phase{a}{b}:0"
                inputs = [resize.input[0], weights, *conv.input[2:]]
                new.append(
                    helper.make_node(
                        "Conv",
                        inputs,
                        [output],
                        name=f"{name}/phase{a}{b}",
                        kernel_shape=[2, 2],
                        pads=[1 - a, 1 - b, a, b],
                    )
                )
                phases.append(output)
        new += [
            helper.make_node("Concat", phases, [f"{name}/phases"], name=f"{name}/phases", axis=1),
            helper.make_node("DepthToSpace", [f"{name}/phases"], list(conv.output), name=name, blocksize=2, mode="DCR"),
        ]
        replaced[id(conv)] = new
        dropped.add(id(resize))
    del graph.node[:]
    graph.node.extend(n for node in nodes if id(node) not in dropped for n in replaced.get(id(node), [node]))
    _drop_unused_constants(graph)
    return len(replaced)


#: Per output phase (0: even rows or columns, 1: odd), the 3 x 3 kernel's taps that read each of its two input
#: rows: phase 0 reads rows i - 1 (tap 0) and i (taps 1, 2), phase 1 rows i (taps 0, 1) and i + 1 (tap 2), since the
#: nearest copy of row i fills output rows 2i and 2i + 1.
_PHASE_TAPS = {0: ((0,), (1, 2)), 1: ((0, 1), (2,))}


def _phase_kernel(kernel: np.ndarray, a: int, b: int) -> np.ndarray:
    """[O, I, 2, 2] float32: the 3 x 3 `kernel` [O, I, 3, 3] of a convolution after a nearest x2 upsampling, as the
    2 x 2 kernel on the low-resolution input that computes its outputs in row phase `a` and column phase `b`."""
    rows = [kernel[:, :, list(taps)].sum(axis=2) for taps in _PHASE_TAPS[a]]  # each [O, I, 3]
    return np.stack(
        [np.stack([row[:, :, list(taps)].sum(axis=2) for taps in _PHASE_TAPS[b]], axis=-1) for row in rows], axis=-2
    ).astype(np.float32)


def _appended_channels(pad: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> int | None:
    """How many zero channels a 4-D Pad appends, or None if it does anything else."""
    mode = _attribute(pad, "mode", b"constant")
    if mode != b"constant" or pad.input[1] not in constants:
        return None
    value = pad.input[2] if len(pad.input) > 2 else ""
    if value and (value not in constants or numpy_helper.to_array(constants[value]).any()):
        return None
    pads = numpy_helper.to_array(constants[pad.input[1]]).tolist()
    if len(pads) != 8 or pads[5] <= 0 or any(v for i, v in enumerate(pads) if i != 5):
        return None
    return int(pads[5])


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    """The value of a node's attribute, or `default` where the node does not set it."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _producers(nodes: Iterable[onnx.NodeProto]) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node that computes it."""
    return {output: node for node in nodes for output in node.output}


def _readers(nodes: Iterable[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it (names no node reads are absent)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _drop_unused_constants(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove the nodes whose outputs nothing reads (what a rewrite bypassed, with the shape arithmetic it fed)."""
    outputs = {value.name for value in graph.output}
    nodes = list(graph.node)
    while True:
        read = {name for node in nodes for name in node.input} | outputs
        alive = [node for node in nodes if any(name in read for name in node.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    del graph.node[:]
    graph.node.extend(nodes)
