"""What HTTP costs on top of the model: the server's CPU per request under `wrk` at concurrency 16 against the same
work's CPU in process, and its throughput against the in-process limit, per model endpoint, side by side.

    apt-get install wrk                        # the load generator (C, one thread: little CPU of its own)
    python -m bench.bench_overhead             # models/celeba-64, a worker per core, 1 onnxruntime thread, 3 x 5 s
    python -m bench.bench_overhead --model models/celeba-64-int8 --rounds 5 --seconds 10

One server (`python -m service`, as `testkit.servers.serving` starts it) serves every round. Per round and endpoint:
`wrk -t1 -c16 -d<seconds>s` with the endpoint's request (a Lua script sets method, body and content type), the
server's CPU time read from /proc (utime + stime of the server and its worker processes) before and after, so
server CPU per request = that difference / the requests wrk completed; then, with the server idle, the same work in
this process (`bench.common.EndpointWork`: `service.core.operations` plus the image encoding, or the JSON for
/encode), one call at a time: its CPU time per call (`time.process_time`: nothing else runs in this process) and
wall time per call; and the **in-process limit**: the requests per second of the same work called from as many
threads as the server has workers (one per core by default), each looping, with the same sessions (a server can
do no better on these cores). Ratios are taken per round; the table gives the median and the range over the
rounds.

Endpoints: `/sample` (GET, one face), `/decode` and `/edit` on a latent (JSON, Smiling +2), `/encode?align=none` of an
aligned CelebA crop, and `/encode` of a phone-style photo (a face enlarged and tilted in a 640x480 scene:
detection, alignment, encoding and 3 refinement steps). Beside `/decode`, the reference row: the same latent
decoded and PNG-encoded by KServe's Python model server (`bench.kserve_peer`, started with the same bundle,
threads and workers, measured the same way in the same rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from bench import kserve_peer
from bench.common import DEFAULT_DATA, REPO_ROOT, RESULTS_DIR, EndpointWork, Table, face_files, machine, write_report
from service.core import operations
from service.core.defaults import worker_count
from service.core.framing import Align
from service.core.runtime import FaceModel
from testkit.phone_photos import phone_photo
from testkit.servers import free_port, is_ready, serving, started

ATTRIBUTE = "Smiling"
PEER = f"/decode via KServe {version('kserve')}"
STRENGTH = 2.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    body: bytes
    content_type: str
    work: Callable[[int], object]


def cases(work: EndpointWork, crop: bytes) -> list[Case]:
    z = work.model.bundle.latent_stats.mean
    latent = json.dumps({"z": z}).encode()
    edit = json.dumps({"z": z, "attributes": {ATTRIBUTE: STRENGTH}}).encode()

    def encode_json(result: operations.PhotoEncoding) -> bytes:
        encoding = result.encoding
        fields = {"code": encoding.code[0], "z_mean": encoding.z_mean[0], "z_log_var": encoding.z_log_var[0]}
        return json.dumps({**{k: v.tolist() for k, v in fields.items()}, "z": result.z.tolist()}).encode()

    def encode_crop(i: int) -> bytes:
        framing = operations.Framing(align=Align.NONE)
        result = operations.encode_photo(work.model, work.framer, work.photo_decoder, crop, framing, seed=i)
        return encode_json(result)

    def encode_photo(i: int) -> bytes:
        result = operations.encode_photo(work.model, work.framer, work.photo_decoder, work.photo(0), seed=i)
        return encode_json(result)

    return [
        Case("/sample", "GET", "/sample", b"", "", lambda i: work.sample(i, 1)),
        Case("/decode", "POST", "/decode", latent, "application/json", lambda i: work.decode(z)),
        Case(
            "/edit (latent)",
            "POST",
            "/edit",
            edit,
            "application/json",
            lambda i: work.edit(z, {ATTRIBUTE: STRENGTH}),
        ),
        Case("/encode (aligned crop)", "POST", "/encode?align=none", crop, "image/jpeg", encode_crop),
        Case("/encode (phone photo)", "POST", "/encode", work.photo(0), "image/jpeg", encode_photo),
    ]


def kserve_case(work: EndpointWork) -> Case:
    """`/decode`'s latent and work, as the KServe peer (`bench.kserve_peer`) is asked for them."""
    z = work.model.bundle.latent_stats.mean
    body = json.dumps({"instances": [z]}).encode()
    return Case(PEER, "POST", kserve_peer.PREDICT_PATH, body, "application/json", lambda i: work.decode(z))


@contextmanager
def kserve_server(bundle: Path, threads: int, workers: int, log_path: Path) -> Iterator[tuple[str, int]]:
    """`bench.kserve_peer` on a free loopback port: its base URL and pid, once its model is ready."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "bench.kserve_peer", "--model", str(bundle), "--port", str(port)]
    command += ["--threads", str(threads), "--workers", str(workers)]
    with started(command, log_path, lambda: is_ready(base_url, kserve_peer.READY_PATH)) as process:
        yield base_url, process.pid


def _processes() -> tuple[dict[int, int], dict[int, float]]:
    """Every running process's parent and CPU seconds (user + system), from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return parents, times


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and every descendant still running."""
    parents, times = _processes()
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, p in parents.items() if p == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(p, 0.0) for p in tree)


def worker_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each of a server's worker processes (`pid`'s children; `pid` itself when it has none)."""
    parents, times = _processes()
    return {child: times[child] for child, parent in parents.items() if parent == pid} or {pid: times.get(pid, 0.0)}


def wrk(url: str, case: Case, seconds: float, connections: int, scratch: Path) -> dict[str, float]:
    """One wrk run: requests, requests/s, errors, latency p50/p99 (ms)."""
    body_file = scratch / "body.bin"
    body_file.write_bytes(case.body)
    script = scratch / "request.lua"
    lines = [f'wrk.method = "{case.method}"']
    if case.body:
        lines += [
            f'local f = io.open("{body_file}", "rb")',
            "wrk.body = f:read('*a')",
            "f:close()",
            f'wrk.headers["Content-Type"] = "{case.content_type}"',
        ]
    lines += [
        "done = function(summary, latency, requests)",
        '  io.write(string.format("P50 %f\\nP99 %f\\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))',
        "end",
    ]
    script.write_text("\n".join(lines) + "\n")
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script), url + case.path]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "errors": int(errors.group(1)) if errors else 0,
        "p50_ms": float(re.search(r"P50 ([\d.]+)", output).group(1)),
        "p99_ms": float(re.search(r"P99 ([\d.]+)", output).group(1)),
    }


def in_process(case: Case, calls: int, threads: int) -> dict[str, float]:
    """Process CPU and wall milliseconds per call, `calls` sequential calls after 3 untimed ones (process CPU: the
    face detector's sessions may run on a pool; nothing else runs in this process); then `limit_rps`: `calls`
    calls on each of `threads` threads at once, per second of wall time."""
    for i in range(3):
        case.work(i)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(calls):
        case.work(i)
    sequential = {
        "cpu_ms": (time.process_time() - cpu) * 1000 / calls,
        "wall_ms": (time.perf_counter() - wall) * 1000 / calls,
    }
    with ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        list(pool.map(case.work, range(calls * threads)))
        return {**sequential, "limit_rps": calls * threads / (time.perf_counter() - started)}


def spread(values: Sequence[float]) -> str:
    return f"{np.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "celeba-64")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk duration per round and endpoint")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--calls", type=int, default=40, help="in-process calls per round and endpoint")
    parser.add_argument("--workers", type=int, default=0, help="server worker processes; 0: its default, one per core")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per session")
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for python -m service")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "overhead.json")
    args = parser.parse_args(argv)

    workers = worker_count(args.workers)
    faces = face_files(args.data, 2)
    crop = faces[0].read_bytes()
    photo = phone_photo(faces[1], seed=1).jpeg
    model = FaceModel.load(args.model, threads=args.threads, warm_up=True)
    work = EndpointWork(model, model, [photo])
    ours = cases(work, crop)
    endpoint_cases = [*ours[:2], kserve_case(work), *ours[2:]]  # the peer beside /decode
    results: dict[str, list[dict[str, float]]] = {case.name: [] for case in endpoint_cases}
    floor_runs: list[dict[str, float]] = []
    with (
        tempfile.TemporaryDirectory() as scratch,
        serving(
            args.model, Path(scratch) / "server.log", *args.server_arg, workers=args.workers, threads=args.threads
        ) as server,
        kserve_server(args.model, args.threads, workers, Path(scratch) / "peer.log") as peer,
    ):
        target = {case.name: (server.base_url, server.process.pid) for case in endpoint_cases} | {PEER: peer}
        for case in endpoint_cases:  # warm-up: every path once through its server
            wrk(target[case.name][0], case, 1, args.connections, Path(scratch))
        floor = Case("/health/live", "GET", "/health/live", b"", "", lambda i: None)
        for round_ in range(args.rounds):
            before = process_tree_cpu(server.process.pid)  # the HTTP floor: no model work at all
            load = wrk(server.base_url, floor, args.seconds, args.connections, Path(scratch))
            server_cpu_ms = (process_tree_cpu(server.process.pid) - before) * 1000 / load["requests"]
            floor_runs.append({**load, "server_cpu_ms": server_cpu_ms})
            for case in endpoint_cases:
                url, pid = target[case.name]
                before = process_tree_cpu(pid)
                load = wrk(url, case, args.seconds, args.connections, Path(scratch))
                server_cpu_ms = (process_tree_cpu(pid) - before) * 1000 / max(1, load["requests"])
                local = in_process(case, args.calls, workers)
                row = {**load, "server_cpu_ms": server_cpu_ms, **{f"in_process_{k}": v for k, v in local.items()}}
                row["cpu_ratio"] = server_cpu_ms / local["cpu_ms"]
                row["throughput_ratio"] = load["rps"] / local["limit_rps"]
                results[case.name].append(row)
                print(round_, case.name, {k: round(v, 3) for k, v in row.items()}, flush=True)

    over_peer = [ours["rps"] / theirs["rps"] for ours, theirs in zip(results["/decode"], results[PEER], strict=True)]
    rows = []
    for name, runs in results.items():
        rows.append(
            [
                name,
                f"{np.median([r['server_cpu_ms'] for r in runs]):.2f}",
                f"{np.median([r['in_process_cpu_ms'] for r in runs]):.2f}",
                spread([r["cpu_ratio"] for r in runs]),
                f"{np.median([r['rps'] for r in runs]):.0f}",
                f"{np.median([r['in_process_limit_rps'] for r in runs]):.0f}",
                spread([r["throughput_ratio"] for r in runs]),
                f"{np.median([r['p50_ms'] for r in runs]):.1f} / {np.median([r['p99_ms'] for r in runs]):.1f}",
                str(sum(int(r["errors"]) for r in runs)),
            ]
        )
    table = Table(
        f"Server under wrk at c={args.connections} against the same work in process "
        f"({workers} worker(s), {args.threads} onnxruntime thread(s); medians of {args.rounds} rounds)",
        [
            "endpoint",
            "server CPU ms/req",
            "in-process CPU ms",
            "CPU ratio (range)",
            "server req/s",
            f"in-process limit req/s ({workers} threads)",
            "throughput / limit (range)",
            "wrk p50 / p99 ms",
            "non-2xx",
        ],
        rows,
        note=f"HTTP floor, `GET /health/live` (no model work) under the same wrk: "
        f"{np.median([r['server_cpu_ms'] for r in floor_runs]):.2f} ms server CPU per request, "
        f"{np.median([r['rps'] for r in floor_runs]):.0f} req/s. Server CPU = utime + stime of the server's "
        "processes (/proc) "
        "over the wrk run / requests completed; "
        "in-process CPU = process CPU time of the same work called sequentially here; "
        f"limit = the same work looping on {workers} threads in process. wrk runs on the same cores. "
        f"`/decode` throughput ÷ the KServe peer's, per round: {spread(over_peer)}.",
    )
    headline = "; ".join(f"{row[0]}: CPU {row[3]}, throughput {row[6]}" for row in rows)
    report = {"machine": machine(), "model": str(args.model), "args": vars(args) | {"model": str(args.model)}}
    report["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in report["args"].items()}
    report["results"] = results
    report["http_floor"] = floor_runs
    report["decode_over_kserve"] = over_peer
    write_report(args.out, report, [table], headline)


if __name__ == "__main__":
    main()
