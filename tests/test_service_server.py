"""The service as a real process: `python -m service` under uvicorn over loopback HTTP, and without TensorFlow."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from testkit.servers import REPO_ROOT, RunningServer, clean_env, free_port, serving
from tests.images import face_photo, image_bytes


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the module's tests (one of them stops it)."""
    with serving(tiny_bundle, tmp_path_factory.mktemp("server") / "server.log") as running:
        yield running


def test_real_server_samples_and_edits_then_stops_cleanly(server: RunningServer, client: TestClient) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        sampled = http.get("/sample", params={"seed": 11})
        assert sampled.status_code == 200
        assert sampled.headers["content-type"] == "image/png"
        assert sampled.content == client.get("/sample", params={"seed": 11}).content  # same model, same bytes

        edited = http.post(
            "/edit",
            params={"steps": 3, "align": "none"},  # a synthetic face: the crop path
            files={"image": ("face.png", image_bytes(face_photo()), "image/png")},
            data={"attributes": json.dumps({"smiling": 2})},
        )
        assert edited.status_code == 200, edited.text
        assert edited.content.startswith(b"\x89PNG")

        refused = http.post("/edit", json={"z": [0.0], "attributes": {"Smiling": 1}})
        assert refused.status_code == 422
        assert "expected 8" in refused.text

    server.process.send_signal(signal.SIGTERM)
    # Uvicorn shuts down gracefully, then re-raises the signal so a supervisor sees why the process ended.
    assert server.process.wait(timeout=30) == -signal.SIGTERM
    log = server.log_path.read_text()
    assert "Application shutdown complete." in log
    assert "Finished server process" in log
    assert "GET /sample 200" in log and "POST /edit 200" in log and "POST /edit 422" in log
    assert "Traceback" not in log


_NO_TENSORFLOW_SCRIPT = """
import sys
from pathlib import Path

from fastapi.testclient import TestClient

import service.api.cli
from service.api.app import create_app
from service.api.settings import Settings

with TestClient(create_app(Settings(model=Path(sys.argv[1])))) as client:
    assert client.get("/sample").status_code == 200
    photo = Path(sys.argv[2]).read_bytes()
    png = {"content-type": "image/png"}
    assert client.post("/encode", params={"align": "none"}, content=photo, headers=png).status_code == 200
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("tensorflow", "tf2onnx", "keras"))
assert not loaded, loaded
print("no tensorflow")
"""


def test_serving_never_imports_tensorflow(tiny_bundle: Path, tmp_path: Path) -> None:
    """A fresh interpreter, because this one may have imported TensorFlow for training tests."""
    photo = tmp_path / "face.png"
    photo.write_bytes(image_bytes(face_photo()))
    result = subprocess.run(
        [sys.executable, "-c", _NO_TENSORFLOW_SCRIPT, str(tiny_bundle), str(photo)],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "no tensorflow" in result.stdout


def test_with_two_workers_every_scrape_counts_every_worker_s_requests(tiny_bundle: Path, tmp_path: Path) -> None:
    """Each request on its own connection, 16 at a time, so both workers take some; whichever worker answers a scrape
    must report them all (the default runs a worker per core)."""
    requests = 64
    with serving(tiny_bundle, tmp_path / "server.log", workers=2) as running:
        with ThreadPoolExecutor(16) as pool:
            statuses = list(
                pool.map(lambda _: httpx.get(f"{running.base_url}/health/live").status_code, range(requests))
            )
        assert statuses == [200] * requests
        scrapes = [httpx.get(f"{running.base_url}/metrics").text for _ in range(8)]
    line = 'http_requests_total{endpoint="/health/live",method="GET",status="200"}'
    counts = [float(text.split(line, 1)[1].split()[0]) for text in scrapes]
    assert counts == [requests] * len(scrapes)


def _tampered(bundle: Path, into: Path) -> Path:
    shutil.copytree(bundle, into)
    with (into / "decoder.onnx").open("ab") as onnx_file:
        onnx_file.write(b"tampered")
    return into


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda bundle, tmp: tmp / "no-such-bundle", "bundle folder does not exist"),
        (_tampered, "decoder.onnx: sha256 does not match the manifest (file changed or corrupt)"),
    ],
    ids=["missing", "tampered"],
)
def test_a_broken_bundle_stops_the_command_with_the_loader_s_message_last(
    tiny_bundle: Path, tmp_path: Path, workers: int, make: Any, message: str
) -> None:
    """Checked before any worker starts, so `restart: on-failure` and CI see it with any number of workers."""
    broken = make(tiny_bundle, tmp_path / "broken")
    command = ["-m", "service", "--model", str(broken), "--workers", str(workers), "--port", str(free_port())]
    result = subprocess.run(
        [sys.executable, *command], cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(message)
    assert f"cannot serve {broken}" in result.stderr


@pytest.mark.parametrize(
    ("path", "content_type", "first_bytes"),
    [
        ("/encode", "image/png", b"\0" * 1000),
        ("/edit", "multipart/form-data; boundary=xx", b'--xx\r\nContent-Disposition: form-data; name="image"\r\n\r\n'),
    ],
)
def test_a_client_that_leaves_mid_upload_is_logged_as_499_without_a_traceback(
    tiny_bundle: Path, tmp_path: Path, path: str, content_type: str, first_bytes: bytes
) -> None:
    with serving(tiny_bundle, tmp_path / "server.log") as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as client:
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 100000\r\n\r\n"
            client.sendall(head.encode() + first_bytes)
            time.sleep(0.3)
        deadline = time.monotonic() + 10
        while f"POST {path} 499" not in server.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = server.log_path.read_text()
    assert f"POST {path} 499" in log
    assert "client disconnected before its request was read" in log
    assert "Traceback" not in log and " 500 " not in log


def test_a_client_that_sends_the_whole_body_first_reads_the_413(tiny_bundle: Path, tmp_path: Path) -> None:
    """urllib writes all 11 MB before reading: the server drains the body (bounded) before answering, as nginx's
    lingering close does, so the client reads the 413 instead of a connection reset. Several times over, on a
    server of its own, since a reset would only show now and then."""
    with serving(tiny_bundle, tmp_path / "server.log") as server:
        for _ in range(5):
            request = urllib.request.Request(
                f"{server.base_url}/encode", data=b"\0" * (11 * 1024 * 1024), headers={"Content-Type": "image/png"}
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 413
            assert "larger than the limit" in json.loads(refused.value.read())["detail"]


def test_a_stalled_upload_gets_408_and_frees_the_server(tiny_bundle: Path, tmp_path: Path) -> None:
    """Headers and half a body, then silence: 408 after the body timeout, no traceback, and the server still
    answers (and would shut down without waiting for the stalled client)."""
    with serving(tiny_bundle, tmp_path / "server.log", "--body-timeout", "0.5") as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as stalled:
            stalled.sendall(
                b"POST /encode?align=none HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
                b"Content-Length: 100000\r\n\r\n" + b"\0" * 1000
            )
            started = time.monotonic()
            answer = stalled.recv(65536).decode(errors="replace")
            waited = time.monotonic() - started
            while "}" not in answer and (more := stalled.recv(65536)):  # the body may come in a second packet
                answer += more.decode(errors="replace")
        assert answer.startswith("HTTP/1.1 408"), answer
        assert "stalled for more than 0.5 s" in answer
        assert 0.4 < waited < 5
        assert httpx.get(f"{server.base_url}/health/live", timeout=5).status_code == 200
        log = server.log_path.read_text()
    assert "Traceback" not in log and " 500 " not in log
