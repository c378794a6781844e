"""The one place that opens onnxruntime sessions: the model's encoder and decoder, the face detector's networks, and
the networks training exports and the benchmarks compare."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def select_providers(requested: Sequence[str]) -> list[str]:
    """The providers to ask onnxruntime for: the requested ones it offers, or CUDA-then-CPU when none are requested."""
    available = ort.get_available_providers()
    if not requested:
        return [CUDA, CPU] if CUDA in available else [CPU]
    unknown = [name for name in requested if name not in ort.get_all_providers()]
    if unknown:
        raise ValueError(f"unknown onnxruntime providers {unknown}; this build offers {available}")
    missing = [name for name in requested if name not in available]
    if missing:
        logger.warning(
            "providers %s are not in this onnxruntime build (it offers %s); skipping them", missing, available
        )
    return [name for name in requested if name in available] or [CPU]


def open_session(
    model: str | Path | bytes, providers: Sequence[str] = (CPU,), threads: int = 0, *, spin: bool = True
) -> ort.InferenceSession:
    """A session for an ONNX model (a file's path, or the serialized model), run sequentially on `threads`
    intra-op threads (0: onnxruntime's choice, one per core).

    `spin=False` keeps idle threads from busy-waiting: the service's sessions share their cores with the HTTP
    server and other workers. The face detector's networks keep onnxruntime's default (spinning), as they always had.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=list(providers))
