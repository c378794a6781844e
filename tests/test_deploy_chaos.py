"""The compose topology run natively, under load: nginx (deploy/nginx.conf, its upstream pointed at three local
replicas) in front of three `python -m service` processes. One replica is killed with SIGKILL and restarted, then all
three are restarted one after the other (SIGTERM, as a rolling update does) while clients keep sending idempotent
requests: not one of them may fail, since nginx re-sends a GET that met a dead or stopping replica to the next
(`proxy_next_upstream`). Skipped where nginx is not installed (`.ci/run` installs it)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit.servers import REPO_ROOT, STARTUP_TIMEOUT_S, clean_env, free_port, is_ready

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")
CLIENTS = 4
#: deploy/nginx.conf's fail_timeout: how long nginx leaves out a replica that failed.
FAIL_TIMEOUT_S = 2


def native_nginx_conf(replica_ports: list[int], listen_port: int, prefix: Path) -> str:
    """deploy/nginx.conf with what only makes sense in compose replaced: no Docker DNS (the replicas' loopback ports
    instead of `facevae-replica:8000 resolve`), its own pid and log files, loopback only."""
    conf = (REPO_ROOT / "deploy" / "nginx.conf").read_text()
    conf = conf.replace("user nginx;", "user root;" if os.geteuid() == 0 else "")
    conf = re.sub(r"(?m)^\s*resolver(_timeout)? .*;$", "", conf)
    conf = conf.replace("error_log /dev/stderr warn;", f"error_log {prefix}/error.log warn;")
    conf = conf.replace("pid /var/run/nginx.pid;", f"pid {prefix}/nginx.pid;")
    conf = conf.replace("access_log /dev/stdout;", "access_log off;")
    server = re.search(r"(?m)^\s*server facevae-replica:8000 resolve (.*);$", conf)
    assert server, "deploy/nginx.conf's upstream server line changed; update this test"
    assert f"fail_timeout={FAIL_TIMEOUT_S}s" in server.group(1)
    servers = "\n".join(f"        server 127.0.0.1:{port} {server.group(1)};" for port in replica_ports)
    conf, replaced = re.subn(r"(?m)^\s*server facevae-replica:8000 resolve .*;$", servers, conf)
    assert replaced == 1, "deploy/nginx.conf's upstream server line changed; update this test"
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{listen_port};")
    return conf


def start_replica(bundle: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "service", "--model", str(bundle), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("a") as out:
        return subprocess.Popen(
            [*command, "--intra-op-threads", "1", "--graceful-timeout", "5"],
            cwd=REPO_ROOT,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not is_ready(url):
        assert process.poll() is None, f"replica exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{url} not ready"
        time.sleep(0.1)


@pytest.fixture
def topology(tiny_bundle: Path, tmp_path: Path) -> Iterator[tuple[str, list[int], list[subprocess.Popen[bytes]]]]:
    ports = [free_port() for _ in range(3)]
    replicas = [start_replica(tiny_bundle, port, tmp_path / f"replica-{port}.log") for port in ports]
    proxy_port = free_port()
    (tmp_path / "nginx.conf").write_text(native_nginx_conf(ports, proxy_port, tmp_path))
    for name in ("client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp", "logs"):
        (tmp_path / name).mkdir()
    nginx = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],  # type: ignore[list-item]
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "nginx.stderr").open("w"),
        start_new_session=True,
    )
    try:
        for port, replica in zip(ports, replicas, strict=True):
            wait_ready(f"http://127.0.0.1:{port}", replica)
        wait_ready(f"http://127.0.0.1:{proxy_port}", nginx)
        yield f"http://127.0.0.1:{proxy_port}", ports, replicas
    finally:
        for process in [nginx, *replicas]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_kill_and_rolling_restart_under_load_fail_no_request(
    topology: tuple[str, list[int], list[subprocess.Popen[bytes]]], tiny_bundle: Path, tmp_path: Path
) -> None:
    proxy, ports, replicas = topology
    stop = threading.Event()
    outcomes: list[str] = []

    def client(index: int) -> None:
        with httpx.Client(base_url=proxy, timeout=30) as http:
            seed = index * 1_000_000
            while not stop.is_set():
                try:
                    response = http.get("/sample", params={"seed": seed, "n": 2})
                    outcomes.append("ok" if response.status_code == 200 else f"status {response.status_code}")
                except httpx.HTTPError as exc:
                    outcomes.append(f"{type(exc).__name__}: {exc}")
                seed += 1

    threads = [threading.Thread(target=client, args=(index,), daemon=True) for index in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        os.killpg(replicas[0].pid, signal.SIGKILL)  # a crash: in-flight requests die with it
        replicas[0].wait()
        time.sleep(1)
        replicas[0] = start_replica(tiny_bundle, ports[0], tmp_path / f"replica-{ports[0]}.log")
        wait_ready(f"http://127.0.0.1:{ports[0]}", replicas[0])
        for index, port in enumerate(ports):  # a rolling update: one replica at a time, the next once it is ready
            os.killpg(replicas[index].pid, signal.SIGTERM)
            replicas[index].wait(30)
            replicas[index] = start_replica(tiny_bundle, port, tmp_path / f"replica-{port}.log")
            wait_ready(f"http://127.0.0.1:{port}", replicas[index])
            time.sleep(FAIL_TIMEOUT_S)  # nginx tries a replica it left out again after fail_timeout
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    failed = [outcome for outcome in outcomes if outcome != "ok"]
    print(f"\nchaos: {len(outcomes)} requests, {len(failed)} failed")
    assert len(outcomes) > 100
    assert not failed, failed[:5]
