"""Training throughput on real faces vs the same model fed in-memory random tensors.

The input pipeline is good enough when real-data img/s is at least 90% of the synthetic figure.
Both are measured side by side in one process, alternating, so machine noise hits both alike.

    python -m bench.bench_training_speed --data ../shared/data/celeba_subset --sizes 64 112
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from training.classifier import ClassifierConfig, build_classifier
from training.config import TrainConfig
from training.data import as_tf_dataset
from training.prepared import DEFAULT_CACHE, prepare_data
from training.train import build_vae

ROOT = Path(__file__).resolve().parents[1]


def images_per_second(vae, dataset: tf.data.Dataset, steps: int, batch_size: int) -> float:
    """Time `steps` training steps (after the caller's warm-up) through Keras fit."""
    started = time.perf_counter()
    vae.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return steps * batch_size / (time.perf_counter() - started)


def measure(size: int, data_dir: Path, steps: int, rounds: int) -> dict[str, float]:
    config = TrainConfig(image_size=size, max_images=4096)
    data = prepare_data(config, data_dir, DEFAULT_CACHE, skip_bad=False)
    real = as_tf_dataset(data.images[data.train], config.batch_size, shuffle_seed=0).repeat()
    noise = np.random.default_rng(0).random((config.batch_size * 8, size, size, 3), dtype=np.float32)
    synthetic = tf.data.Dataset.from_tensor_slices(noise).batch(config.batch_size).repeat()
    # The default recipe's main phase: perceptual loss (an untrained network of the same shape costs the same) and
    # the discriminator.
    network = build_classifier(ClassifierConfig(image_size=size), attributes=40)
    vae = build_vae(config, network=network)
    vae.adversarial = config.adversarial_weight > 0
    vae.fit(real, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)  # trace and warm up both paths
    vae.fit(synthetic, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)
    real_runs, synthetic_runs = [], []
    for _ in range(rounds):
        real_runs.append(images_per_second(vae, real, steps, config.batch_size))
        synthetic_runs.append(images_per_second(vae, synthetic, steps, config.batch_size))
    real_ips, synthetic_ips = float(np.median(real_runs)), float(np.median(synthetic_runs))
    return {
        "image_size": size,
        "real_img_s": real_ips,
        "synthetic_img_s": synthetic_ips,
        "ratio": real_ips / synthetic_ips,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "celeba_subset")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 112])
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating real/synthetic rounds (median kept)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "training_speed.json")
    args = parser.parse_args()

    rows = [measure(size, args.data, args.steps, args.rounds) for size in args.sizes]
    print(f"{'size':>5} {'real img/s':>11} {'synthetic img/s':>16} {'real/synthetic':>15}")
    for row in rows:
        print(
            f"{row['image_size']:>5} {row['real_img_s']:>11.1f} {row['synthetic_img_s']:>16.1f} {row['ratio']:>15.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or 'unknown CPU'}",
        "tensorflow": tf.__version__,
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
