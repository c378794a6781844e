"""Training under tf.distribute on CPU: two logical devices (MirroredStrategy) and a two-process cluster
(MultiWorkerMirroredStrategy over loopback ports), each in processes of their own, since TensorFlow's devices and
cluster are fixed when it starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.core.bundle import ModelBundle
from testkit.phone_photos import SUBSET
from testkit.servers import REPO_ROOT, free_port
from tests.tiny_training import TINY

pytestmark = pytest.mark.slow
needs_celeba = pytest.mark.skipif(not SUBSET.is_dir(), reason=f"the shared CelebA subset is not at {SUBSET}")
TIMEOUT_S = 600
#: The two-device step's losses and weight updates match the one-device step's to float32 reduction-order noise;
#: without the division by the number of replicas the updates differ by about 40 %.
LOSS_RTOL = 1e-4
UPDATE_RTOL = 1e-3


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT), **extra}


def _train(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "training", *args],
        cwd=REPO_ROOT,
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> str:
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    finally:
        process.kill()
    assert process.returncode == 0, output[-4000:]
    return output


def test_two_logical_devices_make_the_same_step_as_one() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "tests.distributed_steps"],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    one, two = report["losses"]["one"], report["losses"]["two"]
    assert set(one) >= {"loss", "reconstruction_loss", "kl_loss", "perceptual_loss", "generator_loss"}
    assert set(one) >= {"discriminator_loss", "adversarial_balance"}  # the adversarial step, from the first step
    for name, value in one.items():
        assert two[name] == pytest.approx(value, rel=LOSS_RTOL), name
    assert report["relative_update_difference"] < UPDATE_RTOL


@needs_celeba
def test_mirrored_run_resumes_and_writes_a_bundle(tmp_path: Path) -> None:
    run, out = tmp_path / "run", tmp_path / "bundle"
    common = ["--data", str(SUBSET), "--run-dir", str(run), "--no-cache", *TINY]
    mirrored = ["--strategy", "mirrored", "--logical-cpus", "2"]
    output = _finish(_train("fit", *common, *mirrored))
    assert "chief on 2 replicas (mirrored), global batch 16" in output
    _finish(_train("train", *common, *mirrored, "--resume", "--epochs", "2", "--out", str(out)))
    state = json.loads((run / "state.json").read_text())
    assert state["epochs_done"] == 2 and state["history"]["discriminator_loss"][1] > 0
    bundle = ModelBundle.load(out)
    assert bundle.manifest.training["epochs_trained"] == 2


@needs_celeba
def test_two_worker_cluster_trains_and_only_the_chief_writes(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    run, outs = tmp_path / "run", [tmp_path / "bundle-0", tmp_path / "bundle-1"]
    common = ["--data", str(SUBSET), "--run-dir", str(run), "--no-cache", *TINY, "--strategy", "multi-worker"]
    workers = [
        _train("train", *common, "--out", str(outs[index]), TF_CONFIG=json.dumps({"cluster": cluster, "task": task}))
        for index, task in enumerate({"type": "worker", "index": i} for i in range(2))
    ]
    outputs = [_finish(worker) for worker in workers]
    for task, output in zip(("chief", "worker-1"), outputs, strict=True):
        assert f"{task} on 2 replicas (multi-worker), global batch 16" in output
    bundle = ModelBundle.load(outs[0])  # worker 0 is the chief: it exports
    assert bundle.manifest.training["epochs_trained"] == 1
    assert not outs[1].exists()  # the other worker trained but wrote no bundle ...
    assert json.loads((run / "state.json").read_text())["epochs_done"] == 1  # ... nor over the chief's checkpoint
