"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from service.api.app import create_app, load_model
from service.api.settings import Settings
from service.core.bundle import DEFAULT_MODEL
from service.core.runtime import FaceModel
from testkit.servers import RunningServer, serving
from tests.tiny_bundle import build_tiny_bundle

if TYPE_CHECKING:  # imported in the fixture, after pytest_configure has filtered its import-time warning
    from fastapi.testclient import TestClient


def pytest_configure(config: pytest.Config) -> None:
    # Starlette 1.x nudges TestClient users towards the httpx2 fork; with httpx (a dev dependency) it works unchanged.
    config.addinivalue_line("filterwarnings", "ignore:Using `httpx` with `starlette.testclient`:UserWarning")


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, the loop uvicorn serves on (trio, installed with selenium, is not used)."""
    return "asyncio"


# ---- service: a tiny ONNX bundle and an app serving it (no TensorFlow needed) ----------------------------------

#: Small enough that oversized-body tests stay cheap; the 10 MiB default is checked in test_service_settings.py.
TEST_MAX_BODY_BYTES = 256 * 1024
TEST_MAX_BATCH = 9


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="session")
def service_settings(tiny_bundle: Path) -> Settings:
    return Settings(model=tiny_bundle, intra_op_threads=1, max_body_bytes=TEST_MAX_BODY_BYTES, max_batch=TEST_MAX_BATCH)


@pytest.fixture(scope="session")
def client(service_settings: Settings) -> Iterator[TestClient]:
    """A client of an app whose lifespan has run: model loaded, warmed up, ready."""
    from fastapi.testclient import TestClient

    with TestClient(create_app(service_settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def face_model(client: TestClient) -> FaceModel:
    """The model instance the `client` app serves, to compute expected results without HTTP."""
    return client.app.state.model_state.model


# ---- the default bundle served by a real uvicorn process, shared by the client, CLI, v2 and docs tests ----------


@pytest.fixture(scope="session")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """`python -m service` on the committed bundle, started once for every test that needs real HTTP."""
    with serving(DEFAULT_MODEL, tmp_path_factory.mktemp("default-server") / "server.log") as running:
        yield running


@pytest.fixture(scope="session")
def default_model() -> FaceModel:
    """The committed bundle in this process, configured as the server is: the expected results of its answers."""
    settings = Settings(model=DEFAULT_MODEL, intra_op_threads=1)
    return load_model(settings)
