"""The CPU image's start command and health probe, run outside Docker (no Docker engine runs where tests do).

The command line, environment and HEALTHCHECK are read from the Dockerfile's `cpu` stage and run as they are,
with only what a container supplies swapped for local stand-ins: the baked bundle for a tiny test bundle, port 8000
for a free one, 0.0.0.0 for loopback (tests use loopback only), the image's virtual environment for this
interpreter with the checkout on PYTHONPATH, and the empty WORKDIR for an empty folder.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import onnxruntime as ort
import pytest

from service.api.settings import ENV_PREFIX
from testkit.servers import STARTUP_TIMEOUT_S, clean_env, free_port
from tests.deploy_files import (
    REPO_ROOT,
    duration_seconds,
    exec_form,
    healthcheck_argv,
    load_compose,
    parse_healthcheck,
    read_dockerfile,
)

TARGET = "cpu"
STOP_TIMEOUT_S = 10  # Docker's default grace period before SIGKILL
REPLACED = (f"{ENV_PREFIX}MODEL", f"{ENV_PREFIX}PORT", f"{ENV_PREFIX}HOST")


@dataclass(frozen=True)
class Image:
    env: dict[str, str]  # the stage's ENV, unexpanded
    start: list[str]  # ENTRYPOINT + CMD
    healthcheck: list[str]
    healthcheck_timeout_s: float


@pytest.fixture(scope="module")
def image() -> Image:
    stage = read_dockerfile().stage(TARGET)
    entrypoint, cmd = stage.last("ENTRYPOINT"), stage.last("CMD")
    assert cmd is not None
    start = (exec_form(entrypoint.args) or [] if entrypoint else []) + (exec_form(cmd.args) or [])
    check = parse_healthcheck(stage.all("HEALTHCHECK")[0].args)
    assert start and check.command, "exec forms expected (see test_deploy_static.py)"
    timeout = duration_seconds(check.options.get("timeout", "30s"))
    return Image(stage.env(), start, check.command, timeout)


def _local(argv: list[str]) -> list[str]:
    """The image's command with its executables mapped to this environment's."""
    program, rest = argv[0], argv[1:]
    if program in ("python", "python3"):
        return [sys.executable, *rest]
    if program == "facevae-serve":  # this environment's console script, else its documented equivalent
        script = Path(sys.executable).with_name(program)
        return [str(script), *rest] if script.exists() else [sys.executable, "-m", "service", *rest]
    pytest.fail(f"don't know how to run {program!r} outside the image")


def _container_env(image: Image, bundle: Path, port: int, **extra: str) -> dict[str, str]:
    """This process's environment without FACEVAE_*, plus the image's ENV with the stand-ins."""
    env = clean_env()
    env.update({key: value for key, value in image.env.items() if key != "PATH"})  # PATH: the venv is sys.executable
    assert set(REPLACED) <= set(image.env), "the image should set what the test replaces"
    env.update(
        {
            f"{ENV_PREFIX}MODEL": str(bundle),
            f"{ENV_PREFIX}PORT": str(port),
            f"{ENV_PREFIX}HOST": "127.0.0.1",
            f"{ENV_PREFIX}INTRA_OP_THREADS": "1",  # keep the shared CPUs for others
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            **extra,
        }
    )
    return env


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    env: dict[str, str]

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, path: str, status: int) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{path} did not answer {status} within {STARTUP_TIMEOUT_S} s:\n{self.log()}")
            try:
                if httpx.get(self.base_url + path, timeout=2).status_code == status:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)


@contextmanager
def _serve(argv: list[str], env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    """Run `argv` in an empty working folder, like the image's WORKDIR; kill it if the test did not stop it."""
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield Server(process, f"http://127.0.0.1:{env[f'{ENV_PREFIX}PORT']}", log_path, env)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _probe(argv: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_local(argv), env=env, capture_output=True, text=True, timeout=timeout_s)


def _assert_graceful_log(log: str) -> None:
    assert "Shutting down" in log and "Application shutdown complete." in log, log
    assert "Finished server process" in log, log
    assert "Traceback" not in log, log


def test_start_command_serves_passes_its_probes_and_stops_on_sigterm(
    image: Image, tiny_bundle: Path, tmp_path: Path
) -> None:
    env = _container_env(image, tiny_bundle, free_port())
    with _serve(_local(image.start), env, tmp_path) as server:
        server.wait_for("/health/ready", 200)
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            sampled = http.get("/sample", params={"seed": 3})
            assert sampled.status_code == 200
            assert sampled.headers["content-type"] == "image/png"
            assert sampled.content.startswith(b"\x89PNG\r\n\x1a\n")
            assert http.get("/metadata").json()["name"] == "tiny-test"  # the mounted bundle, not the default

        # The image's HEALTHCHECK and the compose file's, exactly as written, within the declared timeout.
        compose_probe = healthcheck_argv(load_compose()["services"]["facevae"]["healthcheck"]["test"])
        for probe in (image.healthcheck, compose_probe):
            result = _probe(probe, env, image.healthcheck_timeout_s)
            assert result.returncode == 0, result.stderr
        # ...and they do fail when nothing answers on the configured port.
        closed = {**env, f"{ENV_PREFIX}PORT": str(free_port())}
        assert _probe(image.healthcheck, closed, image.healthcheck_timeout_s).returncode != 0

        server.process.send_signal(signal.SIGTERM)
        returncode = server.process.wait(timeout=STOP_TIMEOUT_S)
        # Outside a container uvicorn re-raises SIGTERM after its graceful shutdown, so the status reads "killed by
        # SIGTERM"; as a container's PID 1 the kernel drops that re-raise and the status is 0 (next test).
        assert returncode in (0, -signal.SIGTERM), server.log()
        _assert_graceful_log(server.log())


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="with CUDA available the service is ready"
)
def test_healthcheck_fails_while_the_service_is_alive_but_not_ready(
    image: Image, tiny_bundle: Path, tmp_path: Path
) -> None:
    """Readiness, not liveness: FACEVAE_REQUIRE_GPU=true on a CPU-only machine keeps /health/ready at 503."""
    env = _container_env(image, tiny_bundle, free_port(), **{f"{ENV_PREFIX}REQUIRE_GPU": "true"})
    with _serve(_local(image.start), env, tmp_path) as server:
        server.wait_for("/health/live", 200)
        assert httpx.get(server.base_url + "/health/ready", timeout=5).status_code == 503
        compose_probe = healthcheck_argv(load_compose()["services"]["facevae"]["healthcheck"]["test"])
        for probe in (image.healthcheck, compose_probe):
            result = _probe(probe, env, image.healthcheck_timeout_s)
            assert result.returncode != 0
            assert "503" in result.stderr
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=STOP_TIMEOUT_S)


def _pid_namespace_prefix() -> list[str] | None:
    """`unshare` arguments that run a command as PID 1 of a new PID namespace here, or None if none work."""
    if shutil.which("unshare") is None:
        return None
    as_root = ["unshare", "--pid", "--fork", "--kill-child"]
    as_user = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child"]  # unprivileged
    for prefix in (as_root, as_user):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def _only_child(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_start_command_as_pid_1_exits_zero_on_sigterm(image: Image, tiny_bundle: Path, tmp_path: Path) -> None:
    """In the container the server is PID 1 (exec-form CMD), which is what `docker stop` signals: uvicorn's process,
    or with the default worker per core the supervisor of its workers."""
    prefix = _pid_namespace_prefix()
    if prefix is None:
        pytest.skip("cannot create a PID namespace here (unshare missing or not permitted)")
    env = _container_env(image, tiny_bundle, free_port())
    with _serve([*prefix, *_local(image.start)], env, tmp_path) as server:
        server.wait_for("/health/ready", 200)
        assert re.search(r"Started (server|parent) process \[1\]", server.log()), server.log()
        os.kill(_only_child(server.process.pid), signal.SIGTERM)  # the server itself, not unshare
        assert server.process.wait(timeout=STOP_TIMEOUT_S) == 0, server.log()
        _assert_graceful_log(server.log())
