"""Latency at a fixed arrival rate (an open model), per endpoint: what operators size replicas by.

    apt-get install wrk
    python -m bench.bench_open_loop                       # models/celeba-64, a worker per core, 1 onnxruntime thread
    python -m bench.bench_open_loop --model models/celeba-64-int8 --seconds 20
    python -m bench.bench_open_loop --model models/celeba-64-int8 --clients 1 64    # both traffic models

Requests are sent by a separate process (this module with `--drive`: asyncio on uvloop, raw HTTP/1.1 over a pool of
keep-alive connections, at most `--max-connections` open), each at its scheduled time whether or not earlier ones
have answered. A request's latency runs from its scheduled time to the end of its response, so a server that falls
behind is charged for the queue it builds (no coordinated omission); the generator runs without Python's garbage
collector, whose pauses would otherwise be charged to the server. The server runs at a lower CPU priority
(`NICENESS`) so that the generator, on the same cores, sends on time.

Per endpoint (the cases of `bench.bench_overhead`): the closed-loop throughput (16 connections) of `wrk` and of this
generator, for reference; then the **capacity**: the highest constant arrival rate the server keeps up with, found
by bisection (`--search-steps` runs of `--capacity-seconds`) between a tenth of the closed-loop figure and that
figure, a rate being kept up with while its p50 stays within `KEEPS_UP` times the p50 at the tenth. The closed-loop
figure itself is no capacity here: the generator shares the 2 cores with the server and needs more of them at an
open loop's rates, so 75 % of it overloaded the server (p50 of 0.4 s). Then requests arrive at 25, 50, 75 and 90 %
of the capacity for `--seconds` each; p50 and p99 per endpoint and load.

Two traffic models (`--clients`): **one client** (1, the default) whose pool opens a connection only when none is idle,
so a light load travels over a few keep-alive connections; or **N clients** each holding one connection, opened
first, each request sent on the connection idle longest. The difference matters with several worker processes: a
connection belongs to the worker that accepted it, so a few connections can load one worker while the other idles.
Each run reports the busiest worker's share of the server's CPU time (from /proc; 50 % is an even split of two),
and the longest the host kept a ready thread waiting (`StallMeter`), which tells a host's stall from a server's tail.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

from bench.bench_overhead import cases, worker_cpu, wrk
from bench.common import DEFAULT_DATA, REPO_ROOT, RESULTS_DIR, EndpointWork, Table, face_files, machine, write_report
from service.core.defaults import worker_count
from service.core.runtime import FaceModel
from testkit.phone_photos import phone_photo
from testkit.servers import serving

LOADS = (0.25, 0.5, 0.75, 0.9)
#: Connections of the closed-loop runs that measure capacity (wrk's and this load generator's).
CAPACITY_CONNECTIONS = 16
#: A rate is kept up with while its p50 stays within this many times the p50 at a light load.
KEEPS_UP = 3.0
#: The server runs at this lower CPU priority so the load generator, on the same cores, sends each request on time
#: (a late send counts as the server's latency); with a worker per core the server would otherwise starve it.
NICENESS = 10
TIMEOUT_S = 30.0
#: The stall meter's sleep: it wakes this often to see how late it wakes.
STALL_TICK_S = 0.001


# ---- the load generator (its own process) -------------------------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response with a Content-Length or chunked body; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def drive(
    port: int, request: bytes, rate: float, seconds: float, max_connections: int, clients: int = 1
) -> dict[str, Any]:
    """Send `request` at `rate` per second for `seconds`; latency of each from its scheduled time (ms).

    `clients` = 1: one client whose pool opens a connection whenever none is idle (up to `max_connections`), so a
    light load uses a few connections; more: that many connections opened first, each request sent on the one idle
    longest, as from that many clients."""
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    limit = max_connections if clients == 1 else clients
    for _ in range(0 if clients == 1 else clients):
        idle.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    opened = idle.qsize()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    loop = asyncio.get_running_loop()

    async def connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        nonlocal opened
        if idle.empty() and opened < limit:
            opened += 1
            return await asyncio.open_connection("127.0.0.1", port)
        reader, writer = await idle.get()
        if reader.at_eof():  # closed by the server while idle (its keep-alive timeout): reconnect, as clients do
            writer.close()
            return await asyncio.open_connection("127.0.0.1", port)
        return reader, writer

    async def one(scheduled: float) -> None:
        try:
            reader, writer = await connection()
            writer.write(request)
            status = await asyncio.wait_for(_read_response(reader), TIMEOUT_S)
            idle.put_nowait((reader, writer))
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        if status == 200:
            latencies.append((loop.time() - scheduled) * 1000)
        else:
            errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1

    start = loop.time() + 0.05
    total = int(rate * seconds)
    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    late = (loop.time() - start) - seconds
    return {"sent": total, "ok": len(latencies), "errors": errors, "latencies_ms": latencies, "overrun_s": late}


async def saturate(port: int, request: bytes, seconds: float, connections: int) -> dict[str, Any]:
    """Closed loop: `connections` clients each send `request` again as soon as its answer is read, for `seconds`;
    the throughput reached is this load generator's capacity for the server, its own CPU included."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    done: list[int] = []

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while loop.time() < end:
            writer.write(request)
            done.append(await asyncio.wait_for(_read_response(reader), TIMEOUT_S))
        writer.close()

    started = loop.time()
    await asyncio.gather(*(client() for _ in range(connections)))
    ok = sum(1 for status in done if status == 200)
    return {"sent": len(done), "ok": ok, "rps": ok / (loop.time() - started)}


class StallMeter:
    """A thread of the benchmark's process, idle while the generator runs, that sleeps a millisecond at a time and
    records how late it wakes: the longest the host kept a ready thread off the CPU during a run (a virtual machine's
    CPU taken away, other jobs). A tail as long as such a stall is the host's, not the server's."""

    def __init__(self) -> None:
        self.longest_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            before = time.perf_counter()
            time.sleep(STALL_TICK_S)
            self.longest_s = max(self.longest_s, time.perf_counter() - before - STALL_TICK_S)

    def __enter__(self) -> StallMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def percentiles(result: dict[str, Any]) -> tuple[float, float]:
    """p50 and p99 of a `drive` result's latencies, ms (NaN when none answered)."""
    latencies = result["latencies_ms"]
    return tuple(float(v) for v in np.percentile(latencies, [50, 99])) if latencies else (np.nan, np.nan)


def _raw_request(method: str, path: str, body: bytes, content_type: str, port: int) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: keep-alive\r\n"
    if body:
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


# ---- the benchmark ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "celeba-64")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seconds", type=float, default=10.0, help="per endpoint and load")
    parser.add_argument("--capacity-seconds", type=float, default=5.0, help="per closed-loop and search run")
    parser.add_argument("--search-steps", type=int, default=6, help="bisection runs for the capacity")
    parser.add_argument("--loads", type=float, nargs="+", default=list(LOADS))
    parser.add_argument("--max-connections", type=int, default=64, help="the one client's pool (--clients 1)")
    parser.add_argument(
        "--clients",
        type=int,
        nargs="+",
        default=[1],
        help="traffic models: 1, one client with a pool; N, N clients with a connection each (e.g. --clients 1 64)",
    )
    parser.add_argument("--workers", type=int, default=0, help="server worker processes; 0: its default, one per core")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "open_loop.json")
    parser.add_argument("--drive", nargs=2, type=Path, metavar=("PLAN", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:  # the load-generator process
        # A full garbage collection stops this process for up to 100 ms (its imports fill the oldest generation),
        # which the latencies would charge to the server as its tail; one run's garbage is small, so the generator
        # runs without the collector (docs/benchmarks.md, "fixed arrival rate").
        gc.disable()
        plan = json.loads(args.drive[0].read_text())
        request = bytes.fromhex(plan["request"])
        if plan["rate"] is None:
            job = saturate(plan["port"], request, plan["seconds"], CAPACITY_CONNECTIONS)
        else:
            job = drive(plan["port"], request, plan["rate"], plan["seconds"], plan["max_connections"], plan["clients"])
        result = uvloop.run(job)
        args.drive[1].write_text(json.dumps(result))
        return

    faces = face_files(args.data, 2)
    model = FaceModel.load(args.model, threads=args.threads)
    work = EndpointWork(model, model, [phone_photo(faces[1], seed=1).jpeg])
    endpoint_cases = cases(work, faces[0].read_bytes())
    del model, work
    report: dict[str, Any] = {"machine": machine(), "model": str(args.model), "endpoints": {}}
    rows = []
    with (
        tempfile.TemporaryDirectory() as scratch_dir,
        serving(
            args.model, Path(scratch_dir) / "server.log", workers=args.workers, threads=args.threads, niceness=NICENESS
        ) as server,
    ):
        scratch = Path(scratch_dir)
        port = int(server.base_url.rsplit(":", 1)[1])
        for case in endpoint_cases:
            request = _raw_request(case.method, case.path, case.body, case.content_type, port)

            def run_driver(
                rate: float | None, seconds: float, clients: int = 1, request: bytes = request
            ) -> dict[str, Any]:
                """One run of the load generator (closed loop without a rate), with the busiest worker's share of the
                server's CPU during it."""
                plan = {"port": port, "request": request.hex(), "rate": rate, "seconds": seconds, "clients": clients}
                (scratch / "plan.json").write_text(json.dumps({**plan, "max_connections": args.max_connections}))
                command = [sys.executable, "-m", "bench.bench_open_loop", "--drive"]
                before = worker_cpu(server.process.pid)
                with StallMeter() as stalls:
                    subprocess.run([*command, str(scratch / "plan.json"), str(scratch / "result.json")], check=True)
                used = [cpu - before.get(pid, 0.0) for pid, cpu in worker_cpu(server.process.pid).items()]
                result = json.loads((scratch / "result.json").read_text())
                share = max(used) / sum(used) if sum(used) else np.nan
                return {**result, "busiest_worker_share": share, "longest_stall_ms": stalls.longest_s * 1000}

            wrk(server.base_url, case, 1, CAPACITY_CONNECTIONS, scratch)  # warm-up
            wrk_capacity = wrk(server.base_url, case, args.capacity_seconds, CAPACITY_CONNECTIONS, scratch)["rps"]
            closed_loop = run_driver(None, args.capacity_seconds)["rps"]
            entries: dict[str, Any] = {}
            for clients in args.clients:
                light = percentiles(run_driver(closed_loop / 10, args.capacity_seconds, clients))[0]
                low, high = closed_loop / 10, closed_loop
                for _ in range(args.search_steps):
                    rate = (low + high) / 2
                    result = run_driver(rate, args.capacity_seconds, clients)
                    keeps_up = percentiles(result)[0] <= KEEPS_UP * light and not sum(result["errors"].values())
                    low, high = (rate, high) if keeps_up else (low, rate)
                    verdict = "kept up" if keeps_up else "fell behind"
                    print(f"{case.name}, {clients} client(s): {rate:.0f} req/s {verdict}", flush=True)
                capacity = low
                entry: dict[str, Any] = {
                    "capacity_rps": capacity,
                    "closed_loop_rps": closed_loop,
                    "wrk_capacity_rps": wrk_capacity,
                    "loads": {},
                }
                measured = []
                for load in args.loads:
                    rate = load * capacity
                    result = run_driver(rate, args.seconds, clients)
                    p50, p99 = percentiles(result)
                    del result["latencies_ms"]
                    entry["loads"][str(load)] = {**result, "rate": rate, "p50_ms": p50, "p99_ms": p99}
                    measured.append((load, rate, p50, p99, result))
                    print(f"{case.name}, {clients} client(s), {load:.0%}: p50 {p50:.1f} p99 {p99:.1f} ms", flush=True)
                    time.sleep(1)
                # The host's speed drifts within minutes: the closed loop again, after the loads, says whether the
                # capacity they are fractions of still held while they ran.
                entry["closed_loop_after_rps"] = run_driver(None, args.capacity_seconds)["rps"]
                drift = entry["closed_loop_after_rps"] / closed_loop
                for load, rate, p50, p99, result in measured:
                    rows.append(
                        [
                            case.name,
                            str(clients),
                            f"{wrk_capacity:.0f}",
                            f"{closed_loop:.0f}",
                            f"{capacity:.0f}",
                            f"{load:.0%}",
                            f"{rate:.1f}",
                            f"{p50:.1f}",
                            f"{p99:.1f}",
                            f"{p99 / p50:.1f}",
                            f"{result['busiest_worker_share']:.0%}",
                            f"{result['longest_stall_ms']:.0f}",
                            f"{drift:.2f}",
                            str(sum(result["errors"].values())),
                        ]
                    )
                entries[str(clients)] = entry
            report["endpoints"][case.name] = entries
    table = Table(
        f"Open loop: constant arrival rate, latency from the scheduled send ({worker_count(args.workers)} worker(s), "
        f"{args.threads} onnxruntime thread(s), {args.seconds:.0f} s per load)",
        [
            "endpoint",
            "clients",
            "wrk req/s",
            "closed loop req/s",
            "capacity req/s",
            "load",
            "rate req/s",
            "p50 ms",
            "p99 ms",
            "p99 / p50",
            "busiest worker's CPU share",
            "longest host stall ms",
            "closed loop after / before",
            "errors",
        ],
        rows,
        note=f"Closed loop: {CAPACITY_CONNECTIONS} connections, wrk's and this load generator's. Capacity: the highest "
        f"constant arrival rate whose p50 stays within {KEEPS_UP:g}x the p50 at a tenth of the closed-loop figure "
        f"(bisection, {args.search_steps} runs). The load generator is a separate process (uvloop) on the same 2 "
        f"cores; the server runs at nice {NICENESS}. Longest host stall: how late a thread of the benchmark, sleeping "
        f"{STALL_TICK_S * 1000:g} ms at a time, woke at worst during the run. Closed loop after / before: the "
        f"generator's closed-loop throughput measured again after the loads (below 1: the host slowed while they ran, "
        f"so each load was a larger share of what it could then serve).",
    )
    at75 = [row for row in rows if row[5] == "75%"]
    headline = "p99 at 75 % of capacity: " + ", ".join(
        f"{r[0]} ({r[1]}) {r[8]} ms ({r[9]}x p50; closed loop after / before {r[12]})" for r in at75
    )
    write_report(args.out, report, [table], headline)


if __name__ == "__main__":
    main()
