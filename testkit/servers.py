"""The service as a real process on a free loopback port, for the tests and benchmarks that need real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from service import ENV_PREFIX
from service.core.defaults import worker_count

REPO_ROOT = Path(__file__).resolve().parents[1]
#: About 5 s when idle; the CPUs may be shared with training jobs, and every worker loads its own model.
STARTUP_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30
#: Uvicorn logs this once per worker after the lifespan (model load and warm-up) has finished.
WORKER_READY_LINE = "Application startup complete."


class ServerFailed(RuntimeError):
    """The server exited or did not become ready in time; the message holds its log."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_env() -> dict[str, str]:
    """This process's environment without FACEVAE_* variables, so only the caller's settings apply."""
    return {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}


def is_ready(base_url: str, path: str = "/health/ready") -> bool:
    try:
        return httpx.get(f"{base_url}{path}", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@dataclass(frozen=True)
class RunningServer:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path


@contextmanager
def serving(
    bundle: Path, log_path: Path, *extra_args: str, workers: int = 1, threads: int = 1, niceness: int = 0
) -> Iterator[RunningServer]:
    """`python -m service` on a free loopback port, once every worker is ready (`workers=0`: the server's default,
    one per usable core); stopped afterwards. `niceness` > 0 runs it at a lower CPU priority, for load generators
    that share its cores and must send on time.

    The server runs in its own process group, so stopping it also stops uvicorn's worker processes. Raises
    `ServerFailed` with the server's log when it exits or is not ready within `STARTUP_TIMEOUT_S`.
    """
    port = free_port()
    command = [sys.executable, "-m", "service", "--model", str(bundle), "--host", "127.0.0.1", "--port", str(port)]
    command = ["nice", "-n", str(niceness), *command] if niceness else command
    command += ["--workers", str(workers), "--intra-op-threads", str(threads), *extra_args]
    base_url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        # /health/ready answers as soon as one worker is up; the others may still be loading the model.
        return is_ready(base_url) and log_path.read_text().count(WORKER_READY_LINE) >= worker_count(workers)

    with started(command, log_path, ready) as process:
        yield RunningServer(base_url, process, log_path)


@contextmanager
def started(command: list[str], log_path: Path, ready: Callable[[], bool]) -> Iterator[subprocess.Popen[bytes]]:
    """`command` in its own process group, logging to `log_path`, once `ready()`; stopped afterwards. Raises
    `ServerFailed` with the log when it exits or is not ready within `STARTUP_TIMEOUT_S`."""
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=clean_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while not ready():
            if process.poll() is not None:
                raise ServerFailed(f"server exited with {process.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise ServerFailed(f"server not ready after {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL it if it does not exit in time."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
