"""Closed-loop HTTP load generator: `concurrency` clients each send their next request when the last one returns.

Run as its own process by bench/bench_load.py, so its CPU time and event loop never share an interpreter with the
timer of the in-process anchors nor with the server. It reads a plan (JSON: base URL, request templates, cells)
and writes one result per cell (JSON): latencies of successful requests, throughput, and errors by kind.

    python -m bench.loadgen PLAN.json RESULTS.json

It sends with bare httpx, not `facevae_client`: it measures the server, so every 503 must count as an error instead
of being waited out, and decoding each answer's images in this process would slow the load it can generate.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from bench.common import latency_summary

CLIENT_TIMEOUT_S = 60.0


class RequestTemplate(BaseModel):
    """One endpoint call; request i gets `seed=i` when `seeded`, and the body file i mod len(body_files)."""

    model_config = ConfigDict(extra="forbid")

    method: str
    path: str
    params: dict[str, Any] = {}
    json_body: Any = None
    body_files: list[Path] = []
    headers: dict[str, str] = {}
    seeded: bool = False


class Cell(BaseModel):
    """One measurement: a case at one concurrency, bounded by a request count and a time limit."""

    model_config = ConfigDict(extra="forbid")

    case: str
    concurrency: int
    requests: int
    warmup: int
    max_seconds: float


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str
    templates: dict[str, RequestTemplate]
    cells: list[Cell]


class Sender:
    """Builds request i of a template; body files are read once, before any timing."""

    def __init__(self, template: RequestTemplate) -> None:
        self.template = template
        self.bodies = [path.read_bytes() for path in template.body_files]

    async def send(self, client: httpx.AsyncClient, i: int) -> httpx.Response:
        t = self.template
        params = {**t.params, "seed": i} if t.seeded else t.params
        content = self.bodies[i % len(self.bodies)] if self.bodies else None
        return await client.request(
            t.method, t.path, params=params, json=t.json_body, content=content, headers=t.headers
        )


async def _drive(
    client: httpx.AsyncClient, sender: Sender, concurrency: int, requests: int, deadline: float
) -> tuple[list[float], Counter[str]]:
    """`concurrency` workers share `requests` requests; none starts after `deadline` (time.monotonic)."""
    counter = itertools.count()
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def worker() -> None:
        while time.monotonic() < deadline and (i := next(counter)) < requests:
            started = time.perf_counter()
            try:
                response = await sender.send(client, i)
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                continue
            if response.status_code == 200:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors[f"HTTP {response.status_code}"] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


async def run_cell(base_url: str, sender: Sender, cell: Cell) -> dict[str, Any]:
    """Warm up (at least one request per connection, so every connection is open), then measure."""
    limits = httpx.Limits(max_connections=cell.concurrency, max_keepalive_connections=cell.concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=CLIENT_TIMEOUT_S) as client:
        warmup = max(cell.warmup, cell.concurrency)
        await _drive(client, sender, cell.concurrency, warmup, time.monotonic() + cell.max_seconds)
        started = time.perf_counter()
        latencies, errors = await _drive(
            client, sender, cell.concurrency, cell.requests, time.monotonic() + cell.max_seconds
        )
        wall = time.perf_counter() - started
    sent = len(latencies) + sum(errors.values())
    return {
        "case": cell.case,
        "concurrency": cell.concurrency,
        "sent": sent,
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "stopped_by_time_limit": sent < cell.requests,
        "wall_s": wall,
        "req_s": len(latencies) / wall,
        **latency_summary(latencies),
    }


async def run_plan(plan: Plan) -> list[dict[str, Any]]:
    senders = {name: Sender(template) for name, template in plan.templates.items()}
    return [await run_cell(plan.base_url, senders[cell.case], cell) for cell in plan.cells]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plan", type=Path, help="plan JSON written by bench/bench_load.py")
    parser.add_argument("results", type=Path, help="where to write the per-cell results (JSON)")
    args = parser.parse_args()
    plan = Plan.model_validate_json(args.plan.read_text())
    if not plan.base_url.startswith("http://127.0.0.1:"):
        raise SystemExit(f"refusing to load anything but loopback: {plan.base_url}")
    args.results.write_text(json.dumps(asyncio.run(run_plan(plan)), indent=1))


if __name__ == "__main__":
    main()
