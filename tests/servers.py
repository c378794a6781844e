"""The service as a real process on a free loopback port, for the tests that need real HTTP (and a browser)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.settings import ENV_PREFIX

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 60  # about 5 s when idle; the CPUs may be shared with training jobs


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_env() -> dict[str, str]:
    """This process's environment without FACEVAE_* variables, so only the test's settings apply."""
    return {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}


@dataclass(frozen=True)
class RunningServer:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path


@contextmanager
def serving(bundle: Path, log_path: Path, *extra_args: str) -> Iterator[RunningServer]:
    """`python -m service` on a free loopback port, once /health/ready answers 200; killed afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "service", "--model", str(bundle), "--host", "127.0.0.1"]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port), "--intra-op-threads", "1", *extra_args],
            cwd=REPO_ROOT,
            env=clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{base_url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield RunningServer(base_url, process, log_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
