"""CPU time per face of a bundle's networks side by side: float32 against its int8 sibling (`python -m training
quantize`), and both against the float32 networks of an earlier commit (`--before`).

    python -m bench.bench_cpu                                   # models/celeba-64 vs models/celeba-64-int8
    python -m bench.bench_cpu --before ad7c94b --rounds 21      # ... and both vs celeba-64's networks at ad7c94b
    python -m bench.bench_cpu --float32 B --int8 B-int8 --rounds 9 --calls 20

For each network (encoder, decoder), onnxruntime thread count (1, 2) and batch (1, 16), both bundles' sessions are
opened as the service opens them (`service.core.sessions.open_session`, no spinning) in this one process and timed in
interleaved rounds (the order alternates each round): per round, `--calls` runs of each. CPU time is what the machine
pays per face and, unlike wall time, barely moves when other jobs share the cores: at 1 thread the calling thread's
CPU time (`time.thread_time`: onnxruntime runs the graph on it), at 2 threads the process's (`time.process_time`, the
pool's worker included; nothing else runs in this process). Wall time is printed next to it, noisy on a shared machine.
The ratios to the reference (the `--before` networks if given, else float32) are taken per round; the table gives
their median and range over the rounds.

Share of peak = the network's multiply-adds per face (from its ONNX graph: Conv and Gemm/MatMul) / (CPU seconds per
face x the core's peak), the peak measured in the same run as what onnxruntime's own matrix multiplication of
512 x 512 by 512 x 512 reaches per CPU second on one thread (`MatMul` in float32; `MatMulInteger`, uint8 by int8, for
int8): the best its kernels do on this CPU, whatever its clock, boost and instruction set (AVX2, AVX-512, VNNI), which
a clock and a per-cycle count read from /proc/cpuinfo cannot say inside a virtual machine.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from bench.common import REPO_ROOT, RESULTS_DIR, Table, fmt, machine, write_report
from service.core.bundle import (
    DECODER_INPUT,
    ENCODER_INPUT,
    ModelBundle,
    SamplingMode,
)
from service.core.sessions import open_session

NETWORKS = ("encoder", "decoder")
PRECISIONS = ("float32", "int8")
#: Side of the square matrices whose product measures the core's peak (134 M multiply-adds: a millisecond or two).
PEAK_SIDE = 512


def multiply_adds(path: Path) -> int:
    """Multiply-adds of one face through a float32 graph: Conv and Gemm/MatMul, shapes from ONNX shape inference."""
    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]
    }
    weights = {w.name: list(w.dims) for w in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            kernel = weights[node.input[1]]  # [out, in / groups, kh, kw]
            total += int(np.prod(shapes[node.output[0]])) * int(np.prod(kernel[1:]))
        elif node.op_type in ("MatMul", "Gemm"):
            left = shapes.get(node.input[0]) or weights[node.input[0]]
            right = weights.get(node.input[1]) or shapes[node.input[1]]
            total += int(np.prod(left)) * int(right[-1])
    return total


def _product_graph(precision: str) -> bytes:
    """An ONNX graph multiplying its input by a constant PEAK_SIDE-square matrix, in float32 or uint8 x int8."""
    rng = np.random.default_rng(0)
    side = [PEAK_SIDE, PEAK_SIDE]
    if precision == "float32":
        weights = numpy_helper.from_array(rng.standard_normal(side).astype(np.float32), "b")
        node = helper.make_node("MatMul", ["a", "b"], ["c"])
        types = TensorProto.FLOAT, TensorProto.FLOAT
    else:
        weights = numpy_helper.from_array(rng.integers(-64, 64, side).astype(np.int8), "b")
        node = helper.make_node("MatMulInteger", ["a", "b"], ["c"])
        types = TensorProto.UINT8, TensorProto.INT32
    graph = helper.make_graph(
        [node],
        f"peak_{precision}",
        [helper.make_tensor_value_info("a", types[0], side)],
        [helper.make_tensor_value_info("c", types[1], side)],
        [weights],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def peak_macs_per_second(precision: str, rounds: int, calls: int) -> float:
    """Multiply-adds per CPU second of onnxruntime's matrix product on one thread: median over `rounds`."""
    session = open_session(_product_graph(precision), threads=1, spin=False)
    rng = np.random.default_rng(1)
    side = (PEAK_SIDE, PEAK_SIDE)
    a = rng.standard_normal(side).astype(np.float32) if precision == "float32" else rng.integers(0, 256, side, np.uint8)
    for _ in range(3):
        session.run(None, {"a": a})
    rates = []
    for _ in range(rounds):
        cpu = time.thread_time()
        for _ in range(calls):
            session.run(None, {"a": a})
        rates.append(calls * PEAK_SIDE**3 / (time.thread_time() - cpu))
    return float(np.median(rates))


def inputs(bundle: ModelBundle, count: int) -> dict[str, np.ndarray]:
    """Decoder codes from the bundle's sampler and encoder images decoded from them (realistic faces, no data)."""
    eps = np.random.default_rng(0).standard_normal((count, bundle.z_dim), dtype=np.float32)
    codes = bundle.latent_stats.draw(eps, SamplingMode.TRICK)
    (faces,) = open_session(bundle.decoder_path, threads=1).run(None, {DECODER_INPUT: codes})
    return {"decoder": codes, "encoder": faces.astype(np.float32)}


def measure(
    files: dict[str, Path], data: np.ndarray, network: str, threads: int, batch: int, rounds: int, calls: int
) -> dict[str, list[dict[str, float]]]:
    """Per labelled ONNX file of `network`, per round: CPU and wall milliseconds per face over `data`."""
    feed_name = ENCODER_INPUT if network == "encoder" else DECODER_INPUT
    sessions = {label: open_session(path, threads=threads, spin=False) for label, path in files.items()}
    cpu_clock = time.thread_time if threads == 1 else time.process_time
    runs = max(1, calls // batch) if batch > 1 else calls
    for session in sessions.values():  # warm up: allocation, kernel selection
        for i in range(3):
            session.run(None, {feed_name: data[i : i + batch]})
    results: dict[str, list[dict[str, float]]] = {label: [] for label in sessions}
    labels = list(sessions)
    for round_ in range(rounds):
        for label in labels if round_ % 2 == 0 else labels[::-1]:
            session = sessions[label]
            cpu, wall = cpu_clock(), time.perf_counter()
            for i in range(runs):
                start = (i * batch) % (len(data) - batch + 1)
                session.run(None, {feed_name: data[start : start + batch]})
            faces = runs * batch
            results[label].append(
                {"cpu_ms": (cpu_clock() - cpu) * 1000 / faces, "wall_ms": (time.perf_counter() - wall) * 1000 / faces}
            )
    return results


def _ratio(rows: list[dict[str, float]], base: list[dict[str, float]], key: str) -> tuple[float, float, float]:
    ratios = np.array([r[key] for r in rows]) / np.array([b[key] for b in base])
    return float(np.median(ratios)), float(ratios.min()), float(ratios.max())


def networks_at(rev: str, bundle: Path, into: Path) -> dict[str, Path]:
    """The bundle's ONNX networks as committed at git `rev` (`git show`), written to `into`."""
    relative = bundle.resolve().relative_to(REPO_ROOT)
    files = {}
    for network in NETWORKS:
        blob = subprocess.run(
            ["git", "show", f"{rev}:{relative.as_posix()}/{network}.onnx"],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
        ).stdout
        files[network] = into / f"{network}.onnx"
        files[network].write_bytes(blob)
    return files


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--float32", type=Path, default=REPO_ROOT / "models" / "celeba-64")
    parser.add_argument("--int8", type=Path, default=REPO_ROOT / "models" / "celeba-64-int8")
    parser.add_argument(
        "--before", metavar="REV", help="also time --float32's networks at this git commit, the reference"
    )
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=20, help="faces per round and precision (batch 16: calls/16 runs)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "cpu.json")
    args = parser.parse_args(argv)

    bundles = {"float32": ModelBundle.load(args.float32), "int8": ModelBundle.load(args.int8)}
    if bundles["int8"].precision != "int8" or bundles["float32"].precision != "float32":
        raise SystemExit("--float32 must be a float32 bundle and --int8 an int8 one")
    with tempfile.TemporaryDirectory() as scratch:
        files = {
            network: {label: getattr(bundle, f"{network}_path") for label, bundle in bundles.items()}
            for network in NETWORKS
        }
        if args.before:
            old = networks_at(args.before, args.float32, Path(scratch))
            files = {network: {f"float32 at {args.before}": old[network], **files[network]} for network in NETWORKS}
        run(args, files, inputs(bundles["float32"], 64))


def run(args: argparse.Namespace, files: dict[str, dict[str, Path]], data: dict[str, np.ndarray]) -> None:
    """Time every labelled file per network, thread count and batch; the first label is the reference."""
    peak_rate = {precision: peak_macs_per_second(precision, args.rounds, args.calls) for precision in PRECISIONS}
    labels = list(files["decoder"])
    reference, others = labels[0], labels[1:]
    # int8 graphs hold their weights behind DequantizeLinear: they do the float32 graph's multiply-adds
    macs = {
        network: {label: multiply_adds(path) for label, path in files[network].items() if label != "int8"}
        for network in NETWORKS
    }
    for network in NETWORKS:
        macs[network]["int8"] = macs[network]["float32"]
    cases, rows = [], []
    for network in NETWORKS:
        for threads in args.threads:
            for batch in args.batches:
                calls = args.calls * 4 if batch > 1 else args.calls
                timed = measure(files[network], data[network], network, threads, batch, args.rounds, calls)
                cpu = {label: float(np.median([r["cpu_ms"] for r in timed[label]])) for label in timed}
                wall = {label: float(np.median([r["wall_ms"] for r in timed[label]])) for label in timed}
                cpu_ratio = {label: _ratio(timed[label], timed[reference], "cpu_ms") for label in others}
                wall_ratio = {label: _ratio(timed[label], timed[reference], "wall_ms") for label in others}
                # CPU seconds of all cores together, so this is the share of what that core time could do
                peak = {
                    label: macs[network][label] / (cpu[label] / 1000 * peak_rate[_precision(label)]) for label in cpu
                }
                cases.append(
                    {
                        "network": network,
                        "threads": threads,
                        "batch": batch,
                        "cpu_ms_per_face": cpu,
                        "wall_ms_per_face": wall,
                        "cpu_ratio": cpu_ratio,
                        "wall_ratio": wall_ratio,
                        "share_of_peak": peak,
                        "rounds": timed,
                    }
                )
                rows.append(
                    [
                        network,
                        threads,
                        batch,
                        *(fmt(cpu[label], 3) for label in labels),
                        *(_span(cpu_ratio[label]) for label in others),
                        *(_span(wall_ratio[label]) for label in others),
                        *(f"{peak[label]:.0%}" for label in labels),
                    ]
                )
                print(rows[-1], flush=True)
    table = Table(
        f"CPU ms per face, medians of {args.rounds} interleaved rounds; ratios to {reference}",
        [
            "network",
            "threads",
            "batch",
            *(f"{label} CPU ms" for label in labels),
            *(f"{label} / {reference} CPU (range)" for label in others),
            *(f"{label} / {reference} wall (range)" for label in others),
            *(f"{label} share of peak" for label in labels),
        ],
        rows,
        note="CPU = thread CPU time at 1 thread, process CPU time at 2. Multiply-adds per face: "
        + "; ".join(
            f"{network} " + ", ".join(f"{label} {value / 1e6:.1f} M" for label, value in macs[network].items())
            for network in NETWORKS
        )
        + f"; a core's peak, onnxruntime's {PEAK_SIDE}-square matrix product on one thread: "
        f"{peak_rate['float32'] / 1e9:.1f} G float32 (MatMul) and {peak_rate['int8'] / 1e9:.1f} G uint8 x int8 "
        "(MatMulInteger) multiply-adds per CPU second.",
    )
    one = [c for c in cases if c["threads"] == 1]
    headline = f"CPU per face at 1 thread, over {reference}: " + "; ".join(
        f"{c['network']} batch {c['batch']} " + ", ".join(f"{label} {_span(c['cpu_ratio'][label])}" for label in others)
        for c in one
    )
    report = {
        "machine": machine(),
        "files": {network: {label: str(path) for label, path in by.items()} for network, by in files.items()},
        "reference": reference,
        "multiply_adds": macs,
        "peak_multiply_adds_per_cpu_second": peak_rate,
        "cases": cases,
    }
    write_report(args.out, report, [table], headline)


def _precision(label: str) -> str:
    return "int8" if label == "int8" else "float32"


def _span(ratio: tuple[float, float, float]) -> str:
    return f"{ratio[0]:.2f} ({ratio[1]:.2f}-{ratio[2]:.2f})"


if __name__ == "__main__":
    main()
