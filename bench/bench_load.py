"""Serving speed against its limits: the real server under concurrent load, next to the same work without HTTP
(onnxruntime in-process) and with the textbook's TensorFlow (eager Keras calls).

1. Starts `python -m service` on a free loopback port with the given workers and onnxruntime threads, and drives
   each endpoint case at each concurrency from a separate load-generator process (bench/loadgen.py): p50/p95/p99,
   requests per second and errors.
2. With the server stopped (so nothing competes for the cores), times the same work in this process: the
   "in-process limit" (FaceModel + the image encoding the endpoint does) and, when a run folder with the Keras
   checkpoint exists, the TensorFlow baseline (`model(x, training=False)` on the Keras encoder/decoder), plus the
   networks alone at batch 1 and 16.
3. With --sweep, repeats a short load test for every workers x threads setting and names the fastest.

    python -m bench.bench_load --sweep              # the documented run: models/celeba-64, runs/celeba-64
    python -m bench.bench_load --workers 2 --threads 1          # the grid at another server setting
    python -m bench.bench_load --model /tmp/tiny --requests 20 --concurrency 1 4 --out /tmp/load.json --figures /tmp

Writes JSON (--out), the same tables as Markdown next to it (.md), and figures into --figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_DATA,
    FIGURES_DIR,
    REPO_ROOT,
    RESULTS_DIR,
    EndpointWork,
    Table,
    face_files,
    fmt,
    latency_summary,
    machine,
    running_server,
    time_calls,
    write_report,
)
from bench.loadgen import Cell, Plan, RequestTemplate
from service.core.bundle import DEFAULT_MODEL
from service.core.defaults import session_threads
from service.core.operations import Networks
from service.core.runtime import Encoding, FaceModel, refined_codes

#: `live` (GET /health/live, no model work) is the floor: what HTTP, uvicorn and the load generator cost alone.
CASES = ("live", "sample_n1", "sample_n16", "decode", "encode", "edit")
BATCH = 16
EDIT_STRENGTH = 2.0
PHOTOS = 16
#: Grey levels the TensorFlow and onnxruntime faces may differ by (rounding) before the run counts as another model.
PARITY_LEVELS = 1
HEADLINE_CONCURRENCY = 16
#: Generous: the load generator stops starting requests after max_seconds per cell itself.
LOADGEN_SLACK_S = 120


class KerasNetworks:
    """The textbook's way to run the model: eager calls on the Keras encoder and decoder, training=False."""

    def __init__(self, vae: Any, refine_steps: int) -> None:
        self.vae = vae
        self.refine_steps = refine_steps

    def encode_pixels(self, pixels: np.ndarray) -> Encoding:
        z_mean, z_log_var = self._encode(pixels.astype(np.float32) / np.float32(255.0))
        code = refined_codes(z_mean, self.refine_steps, lambda images: self._encode(images)[0], self._decode)
        return Encoding(z_mean=z_mean, z_log_var=z_log_var, code=code)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(self._decode(z) * 255.0), 0, 255).astype(np.uint8)

    def _encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z_mean, z_log_var = self.vae.encoder(images, training=False)
        return np.asarray(z_mean), np.asarray(z_log_var)

    def _decode(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(self.vae.decoder(z, training=False))


def load_keras(run_dir: Path, model: FaceModel) -> tuple[KerasNetworks | None, str]:
    """The run's Keras VAE, or None and why the TensorFlow baseline is skipped."""
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from training.train import BEST_WEIGHTS, CONFIG_FILE, load_run
    except ImportError as exc:
        return None, f"TensorFlow baseline skipped: cannot import the training package ({exc})"
    missing = [name for name in (CONFIG_FILE, BEST_WEIGHTS) if not (run_dir / name).is_file()]
    if missing:
        return None, f"TensorFlow baseline skipped: {run_dir} has no {' or '.join(missing)}"
    config, vae = load_run(run_dir)
    if (config.image_size, config.z_dim) != (model.image_size, model.z_dim):
        return None, (
            f"TensorFlow baseline skipped: {run_dir} is {config.image_size}px z={config.z_dim}, "
            f"the bundle {model.image_size}px z={model.z_dim}"
        )
    import tensorflow as tf

    backend = KerasNetworks(vae, model.refine_steps)
    z = np.random.default_rng(0).standard_normal((BATCH, model.z_dim), dtype=np.float32)
    # The anchor must run the bundle's network: a run folder from other code or weights would time something else.
    worst = int(np.abs(backend.decode(z).astype(np.int16) - model.decode(z).astype(np.int16)).max())
    threads = tf.config.threading.get_intra_op_parallelism_threads() or "all"
    note = (
        f"TensorFlow {tf.__version__}, eager Keras calls, intra-op threads: {threads}; "
        f"max |TF - ORT| on {BATCH} decoded faces: {worst}/255"
    )
    if worst > PARITY_LEVELS:
        note += f" (WARNING: {run_dir} does not match the bundle; the TensorFlow timings are of another network)"
    return backend, note


# ---- the load test ------------------------------------------------------------------------------------------------


def templates(model: FaceModel, photos: Sequence[Path], attribute: str) -> dict[str, RequestTemplate]:
    """The HTTP side of each case; `work_calls` is the same work in-process."""
    z = model.bundle.latent_stats.mean
    return {
        "live": RequestTemplate(method="GET", path="/health/live"),
        "sample_n1": RequestTemplate(method="GET", path="/sample", seeded=True),
        "sample_n16": RequestTemplate(method="GET", path="/sample", params={"n": BATCH}, seeded=True),
        "decode": RequestTemplate(method="POST", path="/decode", json_body={"z": z}),
        "encode": RequestTemplate(
            method="POST", path="/encode", body_files=list(photos), headers={"content-type": "image/jpeg"}, seeded=True
        ),
        "edit": RequestTemplate(
            method="POST", path="/edit", json_body={"z": z, "attributes": {attribute: EDIT_STRENGTH}}
        ),
    }


def work_calls(work: EndpointWork, attribute: str) -> dict[str, Callable[[int], object]]:
    """One request's work per model case, for `time_calls` (`live` has none)."""
    z = work.model.bundle.latent_stats.mean
    return {
        "sample_n1": lambda i: work.sample(i, 1),
        "sample_n16": lambda i: work.sample(i, BATCH),
        "decode": lambda i: work.decode(z),
        "encode": work.encode,
        "edit": lambda i: work.edit(z, {attribute: EDIT_STRENGTH}),
    }


def network_calls(model: FaceModel, backend: Networks) -> dict[str, Callable[[int], object]]:
    """The networks alone (plus the uint8 conversion both backends do), for the onnxruntime/TensorFlow ratio."""
    rng = np.random.default_rng(0)
    z = {batch: rng.standard_normal((batch, model.z_dim), dtype=np.float32) for batch in (1, BATCH)}
    pixels = rng.integers(0, 256, (1, model.image_size, model.image_size, 3), dtype=np.uint8)
    return {
        "decoder, batch 1": lambda i: backend.decode(z[1]),
        f"decoder, batch {BATCH}": lambda i: backend.decode(z[BATCH]),
        "encoder, batch 1": lambda i: backend.encode_pixels(pixels),
    }


def run_load(
    model_dir: Path, workers: int, threads: int, plan_templates: dict[str, RequestTemplate], cells: list[Cell]
) -> list[dict[str, Any]]:
    """Start the server, run the load generator process over `cells`, stop the server."""
    with tempfile.TemporaryDirectory() as tmp:
        log, plan_file, results_file = Path(tmp) / "server.log", Path(tmp) / "plan.json", Path(tmp) / "results.json"
        with running_server(model_dir, log, workers=workers, threads=threads) as base_url:
            plan = Plan(base_url=base_url, templates=plan_templates, cells=cells)
            plan_file.write_text(plan.model_dump_json())
            limit = sum(2 * cell.max_seconds for cell in cells) + LOADGEN_SLACK_S
            subprocess.run(
                [sys.executable, "-m", "bench.loadgen", str(plan_file), str(results_file)],
                cwd=REPO_ROOT,
                check=True,
                timeout=limit,
            )
        results = json.loads(results_file.read_text())
    for row in results:
        row.update(workers=workers, threads=threads)
        print(
            f"  workers={workers} threads={threads} {row['case']:<11} c={row['concurrency']:<3} "
            f"p50 {row['p50']:8.2f} ms  {row['req_s']:8.1f} req/s  errors {row['errors']}"
        )
    return results


def grid_cells(cases: Sequence[str], concurrency: Sequence[int], args: argparse.Namespace) -> list[Cell]:
    return [
        Cell(case=case, concurrency=c, requests=args.requests, warmup=args.warmup, max_seconds=args.max_seconds)
        for case in cases
        for c in concurrency
    ]


def best_setting(rows: list[dict[str, Any]], cases: Sequence[str]) -> dict[str, Any] | None:
    """The workers x threads setting with the highest geometric-mean throughput over `cases`, errors disqualify."""
    scores = []
    for (workers, threads), group in itertools.groupby(rows, key=lambda r: (r["workers"], r["threads"])):
        members = list(group)
        if any(r["errors"] for r in members) or len(members) != len(cases):
            continue
        score = float(np.exp(np.mean([np.log(r["req_s"]) for r in members])))
        scores.append({"workers": workers, "threads": threads, "geomean_req_s": score})
    return max(scores, key=lambda s: s["geomean_req_s"]) if scores else None


# ---- report -------------------------------------------------------------------------------------------------------


def cell(rows: list[dict[str, Any]], case: str, concurrency: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["case"] == case and r["concurrency"] == concurrency), None)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def compute_ratios(report: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """service/in-process (c=1 by p50, c=16 by time per request = 1 / throughput) and in-process/TensorFlow."""
    ratios = {}
    for case, local_row in report["in_process"].items():
        local = local_row["p50"]
        tf_row = (report["tensorflow"] or {}).get(case)
        at_1, at_16 = cell(report["load"], case, 1), cell(report["load"], case, HEADLINE_CONCURRENCY)
        ms_per_request = 1000.0 / at_16["req_s"] if at_16 and at_16["req_s"] else None
        ratios[case] = {
            "service_c1_p50_over_in_process_p50": ratio(at_1["p50"] if at_1 else None, local),
            f"service_c{HEADLINE_CONCURRENCY}_ms_per_request": ms_per_request,
            f"service_c{HEADLINE_CONCURRENCY}_ms_per_request_over_in_process_p50": ratio(ms_per_request, local),
            "in_process_over_tensorflow_p50": ratio(local, tf_row["p50"] if tf_row else None),
        }
    return ratios


def tables(report: dict[str, Any]) -> list[Table]:
    server = report["server"]
    load_rows = [
        [
            r["case"],
            r["concurrency"],
            *(fmt(r[key], 2) for key in ("p50", "p95", "p99")),
            fmt(r["req_s"]),
            r["ok"],
            f"{r['errors']}" + (" (time limit)" if r["stopped_by_time_limit"] else ""),
        ]
        for r in report["load"]
    ]
    result = [
        Table(
            f"Service over loopback: {server['workers']} worker(s), {server['session_threads']} onnxruntime "
            f"thread(s) per session ({report['bundle']['name']}, {report['bundle']['image_size']}px)",
            ["case", "concurrency", "p50 ms", "p95 ms", "p99 ms", "req/s", "ok", "errors"],
            load_rows,
            "Closed loop: each of `concurrency` clients sends its next request when the previous one returns. "
            "The load generator is a separate process on the same cores.",
        )
    ]
    c = HEADLINE_CONCURRENCY
    anchor_rows = []
    for case in report["in_process"]:
        ratios, at_1 = report["ratios"][case], cell(report["load"], case, 1)
        tf_row = (report["tensorflow"] or {}).get(case)
        anchor_rows.append(
            [
                case,
                fmt(at_1["p50"] if at_1 else None, 2),
                fmt(report["in_process"][case]["p50"], 2),
                fmt(tf_row["p50"] if tf_row else None, 2),
                fmt(ratios["service_c1_p50_over_in_process_p50"], 2),
                fmt(ratios[f"service_c{c}_ms_per_request"], 2),
                fmt(ratios[f"service_c{c}_ms_per_request_over_in_process_p50"], 2),
                fmt(ratios["in_process_over_tensorflow_p50"], 3),
            ]
        )
    result.append(
        Table(
            "Anchors: the same work without HTTP (sequential p50, ms)",
            [
                *("case", "service c=1", "in-process", "TensorFlow", "service/in-process c=1"),
                *(f"service ms/req c={c}", f"÷ in-process c={c}", "ORT/TF"),
            ],
            anchor_rows,
            f"In-process = FaceModel (onnxruntime, {server['session_threads']} thread(s)) + the endpoint's image "
            f"encoding; TensorFlow = the same with eager Keras calls ({report['tensorflow_note']}). "
            f"Service ms/req at c={c} = 1000 / throughput. ORT/TF = in-process time / TensorFlow time "
            "(below 1: onnxruntime is faster).",
        )
    )
    ort_rows, tf_rows = report["networks"]["onnxruntime"], report["networks"].get("tensorflow") or {}
    result.append(
        Table(
            "The networks alone: onnxruntime vs TensorFlow (p50 ms)",
            ["network", "onnxruntime", "TensorFlow", "ORT/TF"],
            [
                [
                    name,
                    fmt(row["p50"], 3),
                    fmt(tf_rows[name]["p50"], 3) if name in tf_rows else None,
                    fmt(ratio(row["p50"], tf_rows[name]["p50"]) if name in tf_rows else None, 3),
                ]
                for name, row in ort_rows.items()
            ],
        )
    )
    sweep = report.get("sweep")
    if sweep:
        best = sweep["best"] or {}
        rows = []
        for (workers, threads), group in itertools.groupby(sweep["load"], key=lambda r: (r["workers"], r["threads"])):
            members = list(group)
            marker = "yes" if (workers, threads) == (best.get("workers"), best.get("threads")) else ""
            rows.append(
                [workers, threads]
                + [f"{fmt(r['req_s'])} ({fmt(r['p95'], 1)})" for r in members]
                + [sum(r["errors"] for r in members), marker]
            )
        result.append(
            Table(
                f"Server settings at concurrency {sweep['concurrency']}: req/s (p95 ms)",
                ["workers", "onnxruntime threads", *sweep["cases"], "errors", "best"],
                rows,
                "Best = highest geometric-mean throughput over the cases, without errors; "
                f"{report['machine']['cores']} cores, shared with the load generator.",
            )
        )
    return result


def headline(report: dict[str, Any]) -> str:
    c = HEADLINE_CONCURRENCY
    parts = []
    for case in report["in_process"]:
        value = report["ratios"][case][f"service_c{c}_ms_per_request_over_in_process_p50"]
        if value is not None:
            parts.append(f"{case} {value:.2f}")
    text = f"service/in-process at concurrency {c} (time per request): " + (", ".join(parts) or "not measured")
    tf_rows = report["networks"].get("tensorflow")
    if tf_rows:
        ort_rows = report["networks"]["onnxruntime"]
        text += "; ORT/TF time at batch 1: " + ", ".join(
            f"{name.split(',')[0]} {ort_rows[name]['p50'] / tf_rows[name]['p50']:.3g}"
            for name in ort_rows
            if name.endswith("batch 1")
        )
    else:
        text += f"; ORT/TF: {report['tensorflow_note']}"
    best = (report.get("sweep") or {}).get("best")
    if best:
        text += f"; best setting: {best['workers']} worker(s) x {best['threads']} thread(s)"
    return text + "."


def draw_figures(report: dict[str, Any], figures: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures.mkdir(parents=True, exist_ok=True)
    fig, (latency_ax, throughput_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for index, case in enumerate(report["cases"]):
        rows = [r for r in report["load"] if r["case"] == case]
        color = f"C{index}"
        levels = [r["concurrency"] for r in rows]
        latency_ax.plot(levels, [r["p50"] for r in rows], "o-", color=color, label=f"{case} p50")
        latency_ax.plot(levels, [r["p99"] for r in rows], "x--", color=color, alpha=0.6)
        throughput_ax.plot(levels, [r["req_s"] for r in rows], "o-", color=color, label=case)
        if case in report["in_process"]:
            throughput_ax.axhline(1000.0 / report["in_process"][case]["p50"], color=color, linestyle=":", alpha=0.7)
    for ax in (latency_ax, throughput_ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(report["concurrency"], [str(c) for c in report["concurrency"]])
        ax.set_yscale("log")
        ax.set_xlabel("concurrency (clients)")
        ax.grid(True, which="both", alpha=0.3)
    latency_ax.set_ylabel("latency, ms (solid p50, dashed p99)")
    throughput_ax.set_ylabel("requests per second")
    throughput_ax.set_title("dotted: 1 / in-process time (one request at a time)", fontsize=9)
    latency_ax.legend(fontsize=8)
    fig.suptitle(f"{report['bundle']['name']}: {report['server']['workers']} worker(s), {report['machine']['cpu']}")
    fig.tight_layout()
    paths = [figures / "load_latency.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    sweep = report.get("sweep")
    if sweep:
        settings = sorted({(r["workers"], r["threads"]) for r in sweep["load"]})
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / len(sweep["cases"])
        for index, case in enumerate(sweep["cases"]):
            values = [
                next(r["req_s"] for r in sweep["load"] if r["case"] == case and (r["workers"], r["threads"]) == s)
                for s in settings
            ]
            ax.bar(np.arange(len(settings)) + index * width, values, width, label=case)
        ax.set_xticks(np.arange(len(settings)) + width * (len(sweep["cases"]) - 1) / 2)
        ax.set_xticklabels([f"{w} worker(s)\n{t} thread(s)" for w, t in settings])
        ax.set_ylabel(f"requests per second at concurrency {sweep['concurrency']}")
        ax.legend()
        fig.tight_layout()
        paths.append(figures / "load_sweep.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


# ---- main ---------------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="bundle folder (default: %(default)s)")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=REPO_ROOT / "runs" / "celeba-64",
        help="run folder with config.json + best.weights.h5 for the TensorFlow baseline; skipped if absent "
        "(default: %(default)s)",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="faces for /encode (default: %(default)s)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="endpoint cases (default: all)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64], help="(default: 1 4 16 64)")
    parser.add_argument("--requests", type=int, default=400, help="timed requests per cell and anchor (default: 400)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests first (default: 20)")
    parser.add_argument(
        "--max-seconds", type=float, default=30.0, help="time limit per load cell and per anchor (default: 30)"
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers for the main run (default: 1)")
    parser.add_argument(
        "--threads", type=int, default=0, help="onnxruntime threads per session, 0 = the service's default (default: 0)"
    )
    parser.add_argument("--sweep", action="store_true", help="also sweep workers x threads (see --sweep-*)")
    parser.add_argument("--sweep-workers", type=int, nargs="+", default=[1, 2], help="(default: 1 2)")
    parser.add_argument("--sweep-threads", type=int, nargs="+", default=[1, 2], help="(default: 1 2)")
    parser.add_argument("--sweep-cases", nargs="+", choices=CASES, default=["sample_n1", "encode"])
    parser.add_argument("--sweep-concurrency", type=int, default=HEADLINE_CONCURRENCY, help="(default: 16)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "load.json", help="JSON (default: %(default)s)")
    parser.add_argument("--figures", type=Path, default=FIGURES_DIR, help="PNG folder (default: %(default)s)")
    args = parser.parse_args()
    if min(args.concurrency) < 1 or args.requests < 1:
        parser.error("--concurrency and --requests must be positive")
    return args


def anchors(model: FaceModel, photos: list[Path], attribute: str, args: argparse.Namespace) -> dict[str, Any]:
    """In-process (onnxruntime) and TensorFlow timings of the same work, and of the networks alone."""
    photo_bytes = [path.read_bytes() for path in photos]

    def timed(calls: dict[str, Callable[[int], object]], cases: Sequence[str] | None = None) -> dict[str, Any]:
        return {
            name: latency_summary(time_calls(call, args.requests, args.warmup, args.max_seconds))
            for name, call in calls.items()
            if cases is None or name in cases
        }

    print("anchors: in-process (onnxruntime)")
    result: dict[str, Any] = {
        "in_process": timed(work_calls(EndpointWork(model, model, photo_bytes), attribute), args.cases),
        "networks": {"onnxruntime": timed(network_calls(model, model))},
        "tensorflow": None,
    }
    keras_backend, result["tensorflow_note"] = load_keras(args.run_dir, model)
    print(result["tensorflow_note"])
    if keras_backend is not None:
        keras_work = EndpointWork(model, keras_backend, photo_bytes)
        result["tensorflow"] = timed(work_calls(keras_work, attribute), args.cases)
        result["networks"]["tensorflow"] = timed(network_calls(model, keras_backend))
    return result


def main() -> None:
    args = parse_args()
    threads = session_threads(args.workers, args.threads)  # the same providers and threads as one server worker
    model = FaceModel.load(args.model, threads=threads, warm_up=True)
    attribute = "Smiling" if "Smiling" in model.bundle.attributes else model.bundle.attributes.names[0]
    photos = face_files(args.data, PHOTOS)
    all_templates = templates(model, photos, attribute)

    print(f"load test: {len(args.cases)} cases x concurrency {args.concurrency}, {args.requests} requests per cell")
    grid = grid_cells(args.cases, args.concurrency, args)
    load = run_load(args.model, args.workers, args.threads, {c: all_templates[c] for c in args.cases}, grid)
    sweep = None
    if args.sweep:
        sweep_cells = grid_cells(args.sweep_cases, [args.sweep_concurrency], args)
        sweep_templates = {case: all_templates[case] for case in args.sweep_cases}
        sweep_rows = []
        for workers, threads in itertools.product(args.sweep_workers, args.sweep_threads):
            sweep_rows += run_load(args.model, workers, threads, sweep_templates, sweep_cells)
        sweep = {
            "cases": args.sweep_cases,
            "concurrency": args.sweep_concurrency,
            "load": sweep_rows,
            "best": best_setting(sweep_rows, args.sweep_cases),
        }

    report: dict[str, Any] = {
        "machine": machine(),
        "bundle": {"name": model.bundle.name, "path": str(args.model), "image_size": model.image_size},
        "server": {"workers": args.workers, "threads": args.threads, "session_threads": threads},
        "providers": model.providers,
        "cases": args.cases,
        "concurrency": args.concurrency,
        "edit_attribute": {attribute: EDIT_STRENGTH},
        "requests": args.requests,
        "warmup": args.warmup,
        "max_seconds": args.max_seconds,
        "load": load,
        "sweep": sweep,
        # After every server has stopped, so nothing competes with the anchors for the cores.
        **anchors(model, photos, attribute, args),
    }
    report["ratios"] = compute_ratios(report)
    report["headline"] = headline(report)
    report["figures"] = [str(path) for path in draw_figures(report, args.figures)]
    write_report(args.out, report, tables(report), report["headline"])


if __name__ == "__main__":
    main()
