"""What the benchmark scripts share: paths, the server under test, the endpoints' in-process work, timing, reports.

Kept free of TensorFlow so the serving benchmarks run in a serving-only environment.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.core import operations
from service.core.framing import FaceFramer
from service.core.imaging import ImageFormat, PhotoDecoder, encode_image, picture
from service.core.operations import Networks
from service.core.runtime import Encoding, FaceModel
from testkit.servers import serving

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The shared CelebA subset (CelebA layout: img_align_celeba/ + list_attr_celeba.txt), read in place.
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "celeba_subset"
RESULTS_DIR = REPO_ROOT / "bench" / "results"
FIGURES_DIR = REPO_ROOT / "docs" / "figures"


# ---- data ---------------------------------------------------------------------------------------------------------


def face_files(data_dir: Path, count: int) -> list[Path]:
    """The first `count` JPEG faces of a CelebA-layout folder or of a plain folder of faces."""
    image_dir = data_dir / "img_align_celeba" if (data_dir / "img_align_celeba").is_dir() else data_dir
    files = sorted(image_dir.glob("*.jpg"))[:count]
    if not files:
        raise SystemExit(f"no *.jpg faces in {image_dir}; pass --data")
    return files


# ---- the server under test ----------------------------------------------------------------------------------------


@contextmanager
def running_server(model: Path, log_path: Path, *, workers: int = 1, threads: int = 0) -> Iterator[str]:
    """`python -m service` on a free loopback port (`testkit.servers.serving`); yields its base URL once every
    worker is ready."""
    with serving(model, log_path, workers=workers, threads=threads) as server:
        yield server.base_url


# ---- the endpoints' work without HTTP -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointWork:
    """What each face endpoint does besides HTTP: the core's operation (`service.core.operations`, which the routers
    call too) and the image encoding, with the networks run by `backend`.

    `model` supplies the latent math, the limits and the framing.
    """

    model: FaceModel
    backend: Networks
    photos: Sequence[bytes]
    image_format: ImageFormat = ImageFormat.PNG
    framer: FaceFramer = field(init=False)
    photo_decoder: PhotoDecoder = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "framer", FaceFramer(self.model.bundle.preprocess))
        object.__setattr__(self, "photo_decoder", PhotoDecoder())

    def photo(self, i: int) -> bytes:
        return self.photos[i % len(self.photos)]

    def _picture(self, result: operations.Faces) -> bytes:
        return encode_image(picture(result.faces, result.columns), self.image_format)

    def sample(self, seed: int, n: int) -> bytes:
        return self._picture(operations.sample(self.model, n, seed, networks=self.backend))

    def decode(self, z: Sequence[float]) -> bytes:
        return self._picture(operations.decode(self.model, [z], networks=self.backend))

    def encode_posterior(self, i: int) -> Encoding:
        """/encode's framing (align=auto: detect and align) and encoding."""
        return self._encode(i).encoding

    def _encode(self, i: int) -> operations.PhotoEncoding:
        return operations.encode_photo(
            self.model, self.framer, self.photo_decoder, self.photo(i), seed=i, networks=self.backend
        )

    def encode(self, i: int) -> np.ndarray:
        return self._encode(i).z

    def edit(self, z: Sequence[float], strengths: Mapping[str, float], steps: int | None = None) -> bytes:
        return self._picture(operations.edit_latent(self.model, z, strengths, steps, networks=self.backend))

    def edit_photo(self, i: int, strengths: Mapping[str, float]) -> bytes:
        """Photo /edit with its defaults: align=auto, output=face, detail=keep."""
        result = operations.edit_photo(
            self.model, self.framer, self.photo_decoder, self.photo(i), strengths, networks=self.backend
        )
        return self._picture(result)


# ---- timing -------------------------------------------------------------------------------------------------------


def time_calls(
    call: Callable[[int], object], requests: int, warmup: int, max_seconds: float = float("inf")
) -> list[float]:
    """Milliseconds of each of `requests` sequential calls after `warmup` untimed ones; none starts after
    `max_seconds` of timing, so slow cases stay bounded."""
    for i in range(warmup):
        call(i)
    durations: list[float] = []
    deadline = time.monotonic() + max_seconds
    for i in range(requests):
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        call(i)
        durations.append((time.perf_counter() - started) * 1000)
    return durations


def latency_summary(durations_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 and mean in milliseconds, and how many (NaN when nothing was measured, e.g. all failed)."""
    if not durations_ms:
        return {"count": 0, **{key: float("nan") for key in ("p50", "p95", "p99", "mean")}}
    p50, p95, p99 = np.percentile(durations_ms, [50, 95, 99])
    return {
        "count": len(durations_ms),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "mean": float(np.mean(durations_ms)),
    }


# ---- reports ------------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Where and when the numbers were taken: what docs/benchmarks.md must quote next to each table."""
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": cores,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "command": " ".join(["python", "-m", _module_name(), *sys.argv[1:]]),
    }


def _module_name() -> str:
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    return spec.name if spec else Path(sys.argv[0]).stem


def _cells(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[list[str]]:
    """Rows as strings, None as a dash, short rows padded with dashes."""
    return [
        ["-" if cell is None else str(cell) for cell in [*row, *[None] * (len(headers) - len(row))]] for row in rows
    ]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; floats as given (format them before)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in _cells(headers, rows)]
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """The same table for the terminal, columns right-aligned except the first."""
    cells = [list(headers), *_cells(headers, rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


@dataclass(frozen=True)
class Table:
    """One result table, printable to the terminal and to Markdown."""

    title: str
    headers: Sequence[str]
    rows: Sequence[Sequence[object]]
    note: str = ""

    def text(self) -> str:
        return f"{self.title}\n{text_table(self.headers, self.rows)}" + (f"\n{self.note}" if self.note else "")

    def markdown(self) -> str:
        return f"#### {self.title}\n\n{markdown_table(self.headers, self.rows)}\n" + (
            f"\n{self.note}\n" if self.note else ""
        )


def write_report(out: Path, report: Mapping[str, Any], tables: Sequence[Table], headline: str) -> Path:
    """Print the tables, write the JSON to `out` and the same tables as Markdown next to it (`.md`)."""
    for table in tables:
        print(f"\n{table.text()}")
    print(f"\n{headline}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    info = report["machine"]
    header = f"Measured {info['date']} on {info['cpu']} ({info['cores']} cores), `{info['command']}`.\n"
    markdown = "\n".join([header, *(table.markdown() for table in tables), f"**Headline.** {headline}\n"])
    fragment = out.with_suffix(".md")
    fragment.write_text(markdown, encoding="utf-8")
    print(f"\nwritten {out} and {fragment}")
    return fragment


def fmt(value: float | None, digits: int = 1) -> str | None:
    """A number for a table cell; None and NaN become a dash."""
    return None if value is None or not np.isfinite(value) else f"{value:.{digits}f}"
