"""Latency of each endpoint over loopback HTTP next to the in-process time of the same work.

Starts `python -m service` on a free loopback port, sends each request sequentially (after a few warm-ups)
with one keep-alive httpx client, then times the same onnxruntime + image work in this process without HTTP.
The gap between the two is what FastAPI, uvicorn, JSON/multipart parsing and the loopback cost per request.

    python -m bench.bench_service            # from the repository root: the default bundle, models/celeba-64
    python -m bench.bench_service --model PATH --requests 100 --out bench/results/service_latency.json

Run it as a module from the repository root: it imports `bench.common`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx

from bench.common import (
    DEFAULT_DATA,
    RESULTS_DIR,
    EndpointWork,
    face_files,
    latency_summary,
    machine,
    running_server,
    time_calls,
)
from service.core.bundle import DEFAULT_MODEL
from service.core.defaults import session_threads
from service.core.runtime import FaceModel

DEFAULT_OUT = RESULTS_DIR / "service_latency.json"
GRID_N = 9
STRIP_STEPS = 7
STRENGTH = 2.0


@dataclass(frozen=True)
class Case:
    """One endpoint call over HTTP and the same work done in-process (None: nothing but HTTP)."""

    name: str
    http: Callable[[httpx.Client, int], httpx.Response]
    in_process: Callable[[int], object] | None


def _cases(model: FaceModel, photos: list[bytes]) -> list[Case]:
    """The endpoints to time; the in-process side is `EndpointWork`, which runs the core's operations the routers
    call, minus HTTP."""
    work = EndpointWork(model, model, photos)
    z = model.bundle.latent_stats.mean
    attribute = model.bundle.attributes.names[0]
    strengths = {attribute: STRENGTH}
    jpeg = {"content-type": "image/jpeg"}
    form = {"attributes": json.dumps(strengths)}
    return [
        Case("GET /health/ready", lambda c, i: c.get("/health/ready"), None),
        Case("GET /sample", lambda c, i: c.get("/sample", params={"seed": i}), lambda i: work.sample(i, 1)),
        Case(
            f"GET /sample n={GRID_N} (grid)",
            lambda c, i: c.get("/sample", params={"seed": i, "n": GRID_N}),
            lambda i: work.sample(i, GRID_N),
        ),
        Case(
            "POST /encode",
            lambda c, i: c.post("/encode", params={"seed": i}, content=work.photo(i), headers=jpeg),
            work.encode,
        ),
        Case("POST /decode", lambda c, i: c.post("/decode", json={"z": z}), lambda i: work.decode(z)),
        Case(
            "POST /edit (latent)",
            lambda c, i: c.post("/edit", json={"z": z, "attributes": strengths}),
            lambda i: work.edit(z, strengths),
        ),
        Case(
            "POST /edit (photo)",
            lambda c, i: c.post("/edit", data=form, files={"image": ("face.jpg", work.photo(i), "image/jpeg")}),
            lambda i: work.edit_photo(i, strengths),
        ),
        Case(
            f"POST /edit steps={STRIP_STEPS}",
            lambda c, i: c.post("/edit", params={"steps": STRIP_STEPS}, json={"z": z, "attributes": strengths}),
            lambda i: work.edit(z, strengths, STRIP_STEPS),
        ),
    ]


def _time_ms(call: Callable[[int], object], requests: int, warmup: int) -> dict[str, float]:
    summary = latency_summary(time_calls(call, requests, warmup))
    return {"median": summary["p50"], "p95": summary["p95"]}


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
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="CelebA-layout folder or folder of face JPEGs (default: %(default)s)",
    )
    parser.add_argument("--requests", type=int, default=50, help="timed requests per endpoint (default: 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per endpoint first (default: 5)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: %(default)s)")
    args = parser.parse_args()

    photos = [path.read_bytes() for path in face_files(args.data, 8)]
    threads = session_threads()  # the same providers and thread count the server picks for itself
    model = FaceModel.load(args.model, threads=threads, warm_up=True)
    cases = _cases(model, photos)

    results: dict[str, dict[str, Any]] = {}
    with (
        TemporaryDirectory() as tmp,
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
        "session_threads": threads,
        "requests": args.requests,
        "warmup": args.warmup,
        "machine": machine(),
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
