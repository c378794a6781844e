"""Latency of each endpoint over loopback HTTP next to the in-process time of the same work.

Starts `python -m service` on a free loopback port, sends each request sequentially (after a few warm-ups)
with one keep-alive httpx client, then times the same onnxruntime + image work in this process without HTTP.
The gap between the two is what FastAPI, uvicorn, JSON/multipart parsing and the loopback cost per request.

    python -m bench.bench_service            # from the repository root: the default bundle, models/celeba-64
    python -m bench.bench_service --model PATH --requests 100 --out bench/results/service_latency.json

(`python bench/bench_service.py` works too once the package is installed, e.g. `pip install -e .`.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from service.imaging import ImageFormat, decode_upload, encode_image, make_grid
from service.runtime import FaceModel, SamplingMode
from service.settings import DEFAULT_MODEL, Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "celeba_subset" / "img_align_celeba"
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "service_latency.json"
GRID_N = 9
STRIP_STEPS = 7
STRENGTH = 2.0
STARTUP_TIMEOUT_S = 120


@dataclass(frozen=True)
class Case:
    """One endpoint call over HTTP and the same work done in-process (None: nothing but HTTP)."""

    name: str
    http: Callable[[httpx.Client, int], httpx.Response]
    in_process: Callable[[int], object] | None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(model: Path, log_path: Path) -> Iterator[str]:
    """`python -m service` on a free loopback port; yields its base URL once ready, stops it on exit."""
    port = _free_port()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--model", str(model), "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _is_ready(base_url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _is_ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _photos(data_dir: Path, count: int) -> list[bytes]:
    files = sorted(data_dir.glob("*.jpg"))[:count]
    if not files:
        raise SystemExit(f"no *.jpg faces in {data_dir}; pass --data")
    return [file.read_bytes() for file in files]


def _cases(model: FaceModel, photos: list[bytes]) -> list[Case]:
    """The endpoints to time. Each in-process function repeats what the router does, minus HTTP."""
    z = model.bundle.latent_stats.mean
    attribute = model.bundle.attributes.names[0]
    strengths = {attribute: STRENGTH}
    png = ImageFormat.PNG

    def photo(i: int) -> bytes:
        return photos[i % len(photos)]

    def sample(i: int, n: int) -> bytes:
        faces = model.decode(model.sample_latents(n, np.random.default_rng(i), SamplingMode.TRICK, 1.0))
        return encode_image(faces[0] if n == 1 else make_grid(faces), png)

    def encode(i: int) -> np.ndarray:
        return model.encode_photos([decode_upload(photo(i))]).sample(np.random.default_rng(i))

    def edit(latent: np.ndarray, steps: int | None) -> bytes:
        faces = model.decode(model.edit(latent, strengths, steps))
        return encode_image(faces[0] if steps is None else make_grid(faces, steps), png)

    def edit_photo(i: int) -> bytes:
        return edit(model.encode_photos([decode_upload(photo(i))]).z_mean[0], None)

    jpeg = {"content-type": "image/jpeg"}
    form = {"attributes": json.dumps(strengths)}
    return [
        Case("GET /health/ready", lambda c, i: c.get("/health/ready"), None),
        Case("GET /sample", lambda c, i: c.get("/sample", params={"seed": i}), lambda i: sample(i, 1)),
        Case(
            f"GET /sample n={GRID_N} (grid)",
            lambda c, i: c.get("/sample", params={"seed": i, "n": GRID_N}),
            lambda i: sample(i, GRID_N),
        ),
        Case(
            "POST /encode", lambda c, i: c.post("/encode", params={"seed": i}, content=photo(i), headers=jpeg), encode
        ),
        Case(
            "POST /decode",
            lambda c, i: c.post("/decode", json={"z": z}),
            lambda i: encode_image(model.decode(model.latents([z]))[0], png),
        ),
        Case(
            "POST /edit (latent)",
            lambda c, i: c.post("/edit", json={"z": z, "attributes": strengths}),
            lambda i: edit(model.latents([z])[0], None),
        ),
        Case(
            "POST /edit (photo)",
            lambda c, i: c.post("/edit", data=form, files={"image": ("face.jpg", photo(i), "image/jpeg")}),
            edit_photo,
        ),
        Case(
            f"POST /edit steps={STRIP_STEPS}",
            lambda c, i: c.post("/edit", params={"steps": STRIP_STEPS}, json={"z": z, "attributes": strengths}),
            lambda i: edit(model.latents([z])[0], STRIP_STEPS),
        ),
    ]


def _time_ms(call: Callable[[int], object], requests: int, warmup: int) -> dict[str, float]:
    for i in range(warmup):
        call(i)
    durations = []
    for i in range(requests):
        started = time.perf_counter()
        call(i)
        durations.append((time.perf_counter() - started) * 1000)
    return {"median": float(np.median(durations)), "p95": float(np.percentile(durations, 95))}


def _checked(client: httpx.Client, request: Callable[[httpx.Client, int], httpx.Response]) -> Callable[[int], object]:
    def call(i: int) -> object:
        response = request(client, i)
        if response.status_code != 200:
            raise RuntimeError(
                f"{response.request.method} {response.request.url} -> {response.status_code}: {response.text}"
            )
        return response.content

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="bundle folder (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of face JPEGs (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per endpoint (default: 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per endpoint first (default: 5)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: %(default)s)")
    args = parser.parse_args()

    photos = _photos(args.data, 8)
    settings = Settings(model=args.model)  # the same providers and thread count the server picks for itself
    model = FaceModel.from_settings(settings)
    cases = _cases(model, photos)

    results: dict[str, dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_server(args.model, Path(tmp) / "server.log") as base_url,
        httpx.Client(base_url=base_url, timeout=60) as client,
    ):
        for case in cases:
            results[case.name] = {"http_ms": _time_ms(_checked(client, case.http), args.requests, args.warmup)}
    for case in cases:  # after the server has stopped, so the two never compete for the cores
        if case.in_process:
            in_process = _time_ms(case.in_process, args.requests, args.warmup)
            results[case.name]["in_process_ms"] = in_process
            results[case.name]["ratio"] = results[case.name]["http_ms"]["median"] / in_process["median"]

    report = {
        "bundle": model.bundle.name,
        "model": str(args.model),
        "image_size": model.image_size,
        "z_dim": model.z_dim,
        "providers": model.providers,
        "session_threads": settings.session_threads,
        "requests": args.requests,
        "warmup": args.warmup,
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "endpoints": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    _print_table(report)
    print(f"\nwritten to {args.out}")


def _print_table(report: dict[str, Any]) -> None:
    print(
        f"{report['bundle']} ({report['image_size']}px, z={report['z_dim']}) on {report['providers']['decoder']}, "
        f"{report['requests']} sequential requests per endpoint, milliseconds"
    )
    header = (
        f"{'endpoint':<24} {'HTTP median':>11} {'HTTP p95':>9} {'in-proc median':>14} {'in-proc p95':>11} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, row in report["endpoints"].items():
        http, local = row["http_ms"], row.get("in_process_ms")
        local_cells = (
            f"{local['median']:>14.2f} {local['p95']:>11.2f} {row['ratio']:>6.1f}"
            if local
            else f"{'-':>14} {'-':>11} {'-':>6}"
        )
        print(f"{name:<24} {http['median']:>11.2f} {http['p95']:>9.2f} {local_cells}")


if __name__ == "__main__":
    main()
