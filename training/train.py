"""The training loop: data in, a run folder with checkpoints and the history out.

A run folder holds `config.json`; `features/` (the perceptual loss's face network, trained first);
`best.weights.h5` (lowest validation reconstruction loss of the last phase); `last.weights.h5` +
`last.optimizer.npz` + `state.json` (for --resume); `history.json`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training.classifier import CONFIG_FILE as CLASSIFIER_CONFIG_FILE
from training.classifier import AttributeClassifier, perceptual_network
from training.config import TrainConfig
from training.data import as_tf_dataset
from training.distribute import Placement
from training.model import VAE, build_decoder, build_discriminator, build_encoder, feature_extractor
from training.prepared import PreparedData

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
BEST_WEIGHTS = "best.weights.h5"
LAST_WEIGHTS = "last.weights.h5"
LAST_OPTIMIZER = "last.optimizer.npz"
STATE_FILE = "state.json"
MONITOR = "val_reconstruction_loss"
FEATURES_DIR = "features"
#: How long a worker waits for the chief to train the face network (about a minute on 2 CPU cores).
FACE_NETWORK_WAIT_S = 3600
#: Settings a resumed run may change; anything else would silently mix two different experiments.
#: (More epochs stretch the cosine learning-rate schedule from where the run is; the last two only shape the export.)
RESUMABLE_CHANGES = {"name", "epochs", "patience", "direction_method", "default_sampling"}


def build_vae(
    config: TrainConfig,
    steps_per_epoch: int | None = None,
    network: keras.Model | None = None,
    synchronized: bool = False,
) -> VAE:
    """A compiled VAE (with its discriminator when adversarial_weight > 0) whose every variable exists.

    `network` is the feature losses' face network, needed when `config.uses_face_network`.
    With `steps_per_epoch` the learning rate follows a cosine from learning_rate to final_learning_rate over
    the run; without it (loading a checkpoint to export it) it is constant. `synchronized` BatchNorm is for
    training on several replicas (the weights are the same either way). Call it inside the strategy's scope.
    """
    discriminator = None
    if config.adversarial_weight > 0:
        discriminator = build_discriminator(config.image_size, config.discriminator_filters)
    vae = VAE(
        build_encoder(config.image_size, config.z_dim, config.filters, synchronized),
        build_decoder(config.image_size, config.z_dim, config.filters, config.residual_blocks, synchronized),
        kl_weight=config.kl_weight,
        seed=config.seed,
        discriminator=discriminator,
        adversarial_weight=config.adversarial_weight,
        feature_network=feature_extractor(network, semantic=config.semantic_weight > 0)
        if config.uses_face_network
        else None,
        perceptual_weight=config.perceptual_weight,
        semantic_weight=config.semantic_weight,
    )
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = config.learning_rate
    if steps_per_epoch is not None and config.final_learning_rate != config.learning_rate:
        floor = config.final_learning_rate / config.learning_rate
        learning_rate = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, config.epochs * steps_per_epoch, alpha=floor
        )
    optimizer_class = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop}[config.optimizer]
    vae.compile(optimizer=optimizer_class(learning_rate=learning_rate))
    if discriminator is not None:
        vae.d_optimizer = keras.optimizers.Adam(config.discriminator_learning_rate, beta_1=0.5, beta_2=0.9)
    vae.build_all(config.image_size)
    return vae


def load_run(run_dir: Path, weights: str = BEST_WEIGHTS) -> tuple[TrainConfig, VAE]:
    """Rebuild a run's model and load its checkpoint."""
    config = TrainConfig.model_validate_json((run_dir / CONFIG_FILE).read_text())
    network = AttributeClassifier.load(run_dir / FEATURES_DIR).model if config.uses_face_network else None
    vae = build_vae(config, steps_per_epoch=1, network=network)  # any schedule: optimizer variables must match
    vae.load_weights(run_dir / weights)
    return config, vae


class LastCheckpoint(keras.callbacks.Callback):
    """Saves what --resume needs after every epoch: weights, optimizer state, history, best so far."""

    def __init__(self, run_dir: Path, state: dict) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.history: dict[str, list[float]] = state["history"]
        self.best: float = state["best"]
        self.seconds_before: float = state.get("seconds", 0.0)
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        self.best = min(self.best, float(logs.get(MONITOR, np.inf)))
        self.model.save_weights(self.run_dir / LAST_WEIGHTS)
        np.savez(self.run_dir / LAST_OPTIMIZER, *[np.asarray(v) for v in self.model.optimizer_variables])
        seconds = self.seconds_before + time.perf_counter() - self.started
        state = {"epochs_done": epoch + 1, "best": self.best, "seconds": seconds, "history": self.history}
        (self.run_dir / STATE_FILE).write_text(json.dumps(state, indent=1))
        (self.run_dir / "history.json").write_text(json.dumps(self.history, indent=1))


def _restore_last(vae: VAE, run_dir: Path) -> dict:
    vae.load_weights(run_dir / LAST_WEIGHTS)
    with np.load(run_dir / LAST_OPTIMIZER, allow_pickle=False) as stored:
        values = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    if len(values) != len(vae.optimizer_variables):
        raise ValueError(f"{run_dir / LAST_OPTIMIZER}: optimizer state does not match the model")
    for variable, value in zip(vae.optimizer_variables, values, strict=True):
        variable.assign(value)
    return json.loads((run_dir / STATE_FILE).read_text())


def run_summary(run_dir: Path) -> dict:
    """Epochs, cumulative training seconds and per-epoch history of a run folder."""
    state = json.loads((run_dir / STATE_FILE).read_text())
    return {"epochs": state["epochs_done"], "seconds": state.get("seconds", 0.0), "history": state["history"]}


def _face_network(config: TrainConfig, data: PreparedData, folder: Path, placement: Placement) -> keras.Model | None:
    """The feature losses' frozen face network (None when no feature loss is on).

    The chief trains it first, on one device, into the run folder; under a strategy with several replicas every
    worker then loads that file inside the strategy's scope, so all replicas judge with the same weights. The
    other workers wait for the file, so the run folder must be one they can all read (as --resume needs too).
    """
    if not config.uses_face_network:
        return None
    if placement.is_chief:
        network = perceptual_network(config, data, folder)
        if placement.replicas == 1:
            return network
    marker = folder / CLASSIFIER_CONFIG_FILE
    deadline = time.monotonic() + FACE_NETWORK_WAIT_S
    while not marker.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{placement.task}: the chief wrote no face network to {folder} in time")
        time.sleep(2)
    with placement.strategy.scope():
        return AttributeClassifier.load(folder).model


def phases(config: TrainConfig) -> list[tuple[int, int, bool]]:
    """(first epoch, end epoch, adversarial) for each phase: a plain-VAE warm-up, then the discriminator joins."""
    if config.adversarial_weight == 0 or config.warmup_epochs >= config.epochs:
        return [(0, config.epochs, False)]
    if config.warmup_epochs == 0:
        return [(0, config.epochs, True)]
    return [(0, config.warmup_epochs, False), (config.warmup_epochs, config.epochs, True)]


def fit(
    config: TrainConfig, data: PreparedData, run_dir: Path, resume: bool, placement: Placement | None = None
) -> dict:
    """Train phase by phase; return the run's summary.

    The best checkpoint is the lowest validation reconstruction loss within the last phase: the warm-up's
    blurrier faces fit pixels a little better and must not win. Early stopping also watches the last phase only.
    Under a `placement` with several replicas (training/distribute.py) every worker runs this; only the chief
    writes into `run_dir`, and --resume reads the chief's checkpoint there (a folder every worker can read).
    """
    placement = placement or Placement(tf.distribute.get_strategy(), True, "chief")
    out_dir = placement.writes_to(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    whole = placement.replicas > 1  # whole batches only: an epoch's last partial one is left out
    steps_per_epoch = len(data.train) // config.batch_size if whole else -(-len(data.train) // config.batch_size)
    network = _face_network(config, data, run_dir / FEATURES_DIR, placement)
    with placement.strategy.scope():
        vae = build_vae(config, steps_per_epoch, network, synchronized=placement.replicas > 1)
        state: dict = {"epochs_done": 0, "best": float("inf"), "history": {}}
        if resume and (run_dir / STATE_FILE).is_file():
            saved = TrainConfig.model_validate_json((run_dir / CONFIG_FILE).read_text())
            if saved.model_dump(exclude=RESUMABLE_CHANGES) != config.model_dump(exclude=RESUMABLE_CHANGES):
                raise ValueError(f"{run_dir / CONFIG_FILE}: --resume needs the same settings as the run being resumed")
            state = _restore_last(vae, run_dir)
            log.info("resuming after epoch %d (best %s %.5f)", state["epochs_done"], MONITOR, state["best"])
    (out_dir / CONFIG_FILE).write_text(config.model_dump_json(indent=1))
    if state["epochs_done"] >= config.epochs:
        log.info("already trained %d epochs", state["epochs_done"])
        return run_summary(run_dir)
    if placement.replicas > 1:
        log.info("%s on %d replicas (%s), global batch %d", placement.task, placement.replicas, placement.name,
                 config.batch_size)  # fmt: skip

    train_ds = as_tf_dataset(data.images[data.train], config.batch_size, config.seed, drop_remainder=whole)
    val_ds = as_tf_dataset(data.images[data.val], config.batch_size, drop_remainder=whole)
    train_ds, val_ds = placement.dataset(train_ds), placement.dataset(val_ds)
    all_phases = phases(config)
    for first, end, adversarial in all_phases:
        if state["epochs_done"] >= end:
            continue
        final = (first, end, adversarial) == all_phases[-1]
        if final and state["epochs_done"] <= first:
            state["best"] = float("inf")
        log.info("epochs %d-%d: %s", first + 1, end, "VAE + discriminator" if adversarial else "VAE only")
        vae.adversarial = adversarial
        vae.make_train_function(force=True)
        last = LastCheckpoint(out_dir, state)
        callbacks: list[keras.callbacks.Callback] = [last]
        if final:
            callbacks = [
                keras.callbacks.ModelCheckpoint(
                    out_dir / BEST_WEIGHTS,
                    monitor=MONITOR,
                    mode="min",
                    save_best_only=True,
                    save_weights_only=True,
                    initial_value_threshold=state["best"] if np.isfinite(state["best"]) else None,
                ),
                keras.callbacks.EarlyStopping(monitor=MONITOR, mode="min", patience=config.patience),
                last,
            ]
        vae.fit(
            train_ds,
            validation_data=val_ds,
            epochs=end,
            initial_epoch=state["epochs_done"],
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles, seeded
            verbose=1 if sys.stderr.isatty() else 2,
        )
        state = json.loads((out_dir / STATE_FILE).read_text())
        if vae.stop_training:
            break
    summary = run_summary(out_dir)
    log.info("trained %d epochs in %.0f s; best %s %.5f", summary["epochs"], summary["seconds"], MONITOR, state["best"])
    return summary
