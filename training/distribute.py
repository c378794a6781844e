"""Training on several devices or machines with TensorFlow's own engine, tf.distribute.

- `default`: one device (TensorFlow's default strategy), how the committed model was trained.
- `mirrored`: `MirroredStrategy` over the GPUs of this machine (or, with `logical_cpus`, over that many logical
  CPU devices, which is how the strategy is tested on a machine without GPUs).
- `multi-worker`: `MultiWorkerMirroredStrategy` across machines, each a worker described by the `TF_CONFIG`
  environment variable (the cluster's addresses and this worker's task); the chief (the `chief` task, or worker 0
  when there is none) writes checkpoints and the bundle, the others write to a scratch folder of their own.

`TrainConfig.batch_size` is the global batch under every strategy: each step's batch is split among the replicas,
so a run on N devices makes the same steps as on one with the same learning rate (training/model.py keeps every
per-batch computation global). To use the extra devices for a larger global batch instead, raise `--batch-size`
and scale `--learning-rate` with it (the linear scaling rule, Goyal et al. 2017); nothing is rescaled silently.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from training.config import StrategyName


@dataclass(frozen=True)
class Placement:
    """Where a run trains (the strategy) and whether this process is the one that writes the results."""

    strategy: tf.distribute.Strategy
    is_chief: bool
    task: str  # "chief", "worker-1", ... ("chief" outside a cluster)
    name: StrategyName = "default"

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def writes_to(self, run_dir: Path) -> Path:
        """The folder this process writes checkpoints to: the run folder for the chief, a scratch folder for the
        other workers (they must save too, as every worker runs the same callbacks, but never over the chief)."""
        if self.is_chief:
            return run_dir
        return Path(tempfile.mkdtemp(prefix=f"facevae-{self.task}-"))

    def dataset(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """Across machines, each worker keeps its share of every global batch (sharding by data: the faces are in
        memory, not in files); on one machine the strategy splits each batch among the devices itself."""
        if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
            return dataset.with_options(options)
        return dataset


def split_cpu(logical_cpus: int) -> None:
    """Present the CPU as `logical_cpus` devices (before TensorFlow initialises them), to test strategies."""
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)


def _chief_of(cluster: dict) -> tuple[bool, str]:
    """Whether this TF_CONFIG task is the chief, and its name."""
    task = cluster.get("task", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    has_chief = "chief" in cluster.get("cluster", {})
    is_chief = kind == "chief" or (not has_chief and kind == "worker" and index == 0)
    return is_chief, "chief" if is_chief else f"{kind}-{index}"


def make_placement(name: StrategyName = "default", logical_cpus: int = 0) -> Placement:
    """The strategy `name` asks for; created first thing, before any other TensorFlow work (multi-worker
    strategies must be, and logical devices can only be configured then)."""
    if logical_cpus > 1:
        split_cpu(logical_cpus)
    if name == "default":
        return Placement(tf.distribute.get_strategy(), True, "chief")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [device.name for device in gpus or tf.config.list_logical_devices("CPU")]
        return Placement(tf.distribute.MirroredStrategy(devices), True, "chief", name)
    if "TF_CONFIG" not in os.environ:
        raise ValueError("--strategy multi-worker needs TF_CONFIG (the cluster and this worker's task)")
    is_chief, task = _chief_of(json.loads(os.environ["TF_CONFIG"]))
    return Placement(tf.distribute.MultiWorkerMirroredStrategy(), is_chief, task, name)
