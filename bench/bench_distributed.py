"""Training step time under MirroredStrategy over two logical CPU devices against one device, side by side.

This machine has no GPUs, so the one multi-device setup it can time is the CPU split into two logical devices: the
same two cores, now driven as two replicas that each take half of the global batch and all-reduce their gradients
(and, here, their BatchNorm statistics, the fitted Gaussian's moments and the balance gradients). That is the
strategy's overhead, not a speed-up; a real speed-up needs devices that add compute (GPUs, more machines), which is
stated in docs/distributed-training.md as unmeasured.

The model is the default recipe's main phase (64x64, global batch 64, perceptual loss through a face network of the
real shape, the discriminator), fed in-memory random images so the input pipeline is out of the comparison. Both
placements are built in one process and timed in interleaved rounds, so machine noise hits both alike.

    python -m bench.bench_distributed                 # 5 rounds of 10 steps each
    python -m bench.bench_distributed --rounds 3 --steps 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from bench.common import RESULTS_DIR, Table, fmt, machine, write_report
from training.classifier import ClassifierConfig, build_classifier
from training.config import TrainConfig
from training.distribute import Placement, make_placement
from training.model import VAE
from training.train import build_vae

DEFAULT_OUT = RESULTS_DIR / "distributed.json"


def _vae(placement: Placement, config: TrainConfig) -> VAE:
    keras.utils.set_random_seed(config.seed)
    with placement.strategy.scope():
        network = build_classifier(ClassifierConfig(image_size=config.image_size), attributes=40)
        vae = build_vae(config, steps_per_epoch=100, network=network, synchronized=placement.replicas > 1)
    vae.adversarial = config.adversarial_weight > 0
    return vae


def _seconds_per_step(vae: VAE, dataset: tf.data.Dataset, steps: int) -> float:
    started = time.perf_counter()
    vae.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return (time.perf_counter() - started) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (one timed run of each per round)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report (a .md table is written beside)")
    args = parser.parse_args(argv)

    two = make_placement("mirrored", logical_cpus=2)  # first: devices are fixed when TensorFlow starts
    one = Placement(tf.distribute.OneDeviceStrategy("/cpu:0"), True, "chief")
    config = TrainConfig()
    noise = np.random.default_rng(0).random((config.batch_size * 4, config.image_size, config.image_size, 3))
    dataset = tf.data.Dataset.from_tensor_slices(noise.astype(np.float32)).batch(config.batch_size).repeat()
    models = {"one device": _vae(one, config), "two logical devices": _vae(two, config)}
    for vae in models.values():
        _seconds_per_step(vae, dataset, 3)  # trace and warm up
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(args.rounds):
        for name, vae in models.items():
            times[name].append(_seconds_per_step(vae, dataset, args.steps))
        print(
            f"round {round_index + 1}/{args.rounds}: "
            + ", ".join(f"{n} {t[-1] * 1000:.0f} ms" for n, t in times.items())
        )
    ratios = np.array(times["two logical devices"]) / np.array(times["one device"])
    rows = [
        [name, fmt(1000 * float(np.median(values))), fmt(config.batch_size / float(np.median(values)))]
        for name, values in times.items()
    ]
    table = Table(
        f"Training step, default recipe at 64x64, global batch {config.batch_size} "
        f"({args.rounds} rounds of {args.steps} steps)",
        ["placement", "ms per step (median)", "img/s"],
        rows,
        note=f"Two logical devices / one device, per round: median {np.median(ratios):.2f}, "
        f"range {ratios.min():.2f}-{ratios.max():.2f}.",
    )
    report = {
        "machine": machine(),
        "times_s": times,
        "ratios": ratios.tolist(),
        "ratio_median": float(np.median(ratios)),
    }
    write_report(
        args.out,
        report,
        [table],
        f"MirroredStrategy over two logical CPU devices takes {np.median(ratios):.2f}x the one-device step time "
        f"(range {ratios.min():.2f}-{ratios.max():.2f} over {args.rounds} rounds): "
        "the strategy's overhead on the same cores",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
