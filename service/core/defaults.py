"""The core's tunable defaults, which the HTTP layer's settings expose as options (`service.api.settings`).

A leaf module: no onnxruntime, no detector, so loading the service's configuration loads no model code. The numbers
behind each choice are in docs/benchmarks.md.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Refinement steps of a photo's code (`FaceModel.refine`): 3 keep more faces' verdicts than 0 at a lower pixel
#: error, and more add little but print texture on hard faces (docs/benchmarks.md, "Refined codes").
REFINE_STEPS = 3
#: Face Mesh passes per detected face at most; a further one runs only while the face's region still moves
#: (`service.core.detection.MESH_SETTLED`). Why two, and what one saves: docs/benchmarks.md, "Real photos: face
#: detection and alignment".
MESH_PASSES = 2
#: Most latents, samples or strip steps one call may ask for: bounds a request's memory and time.
MAX_BATCH = 16
#: Largest attribute strength (1 = the gap between faces with and without it): beyond, a face leaves the range the
#: attribute vectors were measured on.
MAX_STRENGTH = 5.0

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores() -> int:
    """CPU cores this process may use: its affinity mask (taskset, cpusets), capped by a cgroup v2 CPU quota
    (`docker run --cpus`, compose `cpus:`), so a throttled container does not start more threads than it gets."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, int(quota) // int(period)))


def worker_count(requested: int = 0) -> int:
    """Server worker processes: `requested`, or (0) one per usable core.

    One worker's Python (HTTP parsing, validation, image encoding) holds the GIL, so a single process kept about
    1.4 of 2 cores busy; a second worker served 1.2-1.5x the requests a second (docs/benchmarks.md, "HTTP's cost per
    request").
    """
    return requested or usable_cores()


def session_threads(workers: int = 1, requested: int = 0) -> int:
    """Threads per onnxruntime session: `requested`, or (0) half the usable cores shared among the `workers`.

    The other half stays with the HTTP server's event loop and the image encoding; on 2 cores one thread per session
    served the most requests at concurrency 16 (docs/benchmarks.md, server settings sweep).
    """
    return requested or max(1, usable_cores() // (2 * workers))
