"""One VAE training step on one device and on two logical CPU devices (MirroredStrategy), compared; and their times.

Run as `python -m tests.distributed_steps` (a process of its own: logical devices must be configured before
TensorFlow starts). Both runs start from the same weights (same seed) on the same batch, with the perceptual loss
(an untrained face network: any fixed network tests the arithmetic) and the discriminator from the first step.
They use SGD, whose update is proportional to the gradient, so a wrongly scaled gradient shows in the weights
(Adam divides the scale away). Prints JSON: each run's named losses of the first step, the largest difference of
the updates it made (relative to the largest update), and the median seconds per step over `--steps` further steps.
"""

from __future__ import annotations

import argparse
import json
import time

import keras
import numpy as np
import tensorflow as tf

from training.classifier import ClassifierConfig, build_classifier
from training.config import TrainConfig
from training.distribute import Placement, make_placement
from training.train import build_vae

CONFIG = TrainConfig(
    image_size=32, z_dim=16, filters=(8, 16), discriminator_filters=(8, 16), batch_size=16, warmup_epochs=0
)


def _run(placement: Placement, images: np.ndarray, steps: int) -> dict:
    keras.utils.set_random_seed(CONFIG.seed)
    with placement.strategy.scope():
        network = build_classifier(ClassifierConfig(image_size=CONFIG.image_size, filters=(8, 16, 32)), 40)
        vae = build_vae(CONFIG, network=network, synchronized=placement.replicas > 1)
        vae.compile(optimizer=keras.optimizers.SGD(0.05))
        vae.d_optimizer = keras.optimizers.SGD(0.05)
        vae.build_all(CONFIG.image_size)
    vae.adversarial = True
    variables = [*vae.vae_variables, *vae.discriminator.trainable_variables]
    before = [np.asarray(v) for v in variables]
    batch = tf.data.Dataset.from_tensor_slices(images).batch(CONFIG.batch_size)
    first = vae.fit(batch.take(1), epochs=1, verbose=0, shuffle=False).history
    updates = [np.asarray(v) - b for v, b in zip(variables, before, strict=True)]
    durations = []
    for _ in range(steps):
        started = time.perf_counter()
        vae.fit(batch.take(1), epochs=1, verbose=0, shuffle=False)
        durations.append(time.perf_counter() - started)
    return {
        "losses": {name: values[0] for name, values in first.items()},
        "updates": updates,
        "seconds_per_step": float(np.median(durations)) if durations else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=0, help="further steps to time on each placement")
    args = parser.parse_args()
    mirrored = make_placement("mirrored", logical_cpus=2)  # also leaves /cpu:0 for the one-device run
    one = Placement(tf.distribute.OneDeviceStrategy("/cpu:0"), True, "chief")
    images = np.random.default_rng(0).random((CONFIG.batch_size, CONFIG.image_size, CONFIG.image_size, 3))
    images = images.astype(np.float32)
    runs = {"one": _run(one, images, args.steps), "two": _run(mirrored, images, args.steps)}
    pairs = list(zip(runs["one"]["updates"], runs["two"]["updates"], strict=True))
    # How far the two-device update is from the one-device one, relative to the largest update (a variable whose
    # own update is ~0, such as a bias the hinge loss pulls both ways, must not dominate).
    difference = max(float(np.max(np.abs(a - b))) for a, b in pairs)
    scale = max(float(np.max(np.abs(a))) for a, _ in pairs)
    report = {
        "replicas": mirrored.replicas,
        "losses": {name: run["losses"] for name, run in runs.items()},
        "relative_update_difference": difference / scale,
        "seconds_per_step": {name: run["seconds_per_step"] for name, run in runs.items()},
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
