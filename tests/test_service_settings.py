"""Settings from the environment and the command line, and how the CLI hands them to uvicorn."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import uvicorn

from service.api import cli
from service.api.metrics import MULTIPROCESS_DIR
from service.api.protocol import GuardedHttpToolsProtocol
from service.api.settings import DEFAULT_MODEL, ENV_PREFIX, Settings
from service.core import defaults
from service.core.defaults import usable_cores

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A private copy of the environment without FACEVAE_* variables; the CLI writes into it."""
    copy = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    monkeypatch.setattr(os, "environ", copy)
    return copy


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[uvicorn.Config]:
    calls: list[uvicorn.Config] = []
    monkeypatch.setattr(cli, "serve", calls.append)
    return calls


def test_defaults_work_on_a_fresh_clone(environ: dict[str, str]) -> None:
    settings = Settings()
    assert settings.model == DEFAULT_MODEL == REPO_ROOT / "models" / "celeba-64"
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 0)
    assert settings.worker_count == usable_cores()
    assert settings.providers == []
    assert settings.require_gpu is False
    assert settings.max_body_bytes == 10 * 1024 * 1024
    assert settings.max_strength == 5.0


def test_every_setting_comes_from_a_facevae_variable(environ: dict[str, str]) -> None:
    environ.update(
        {
            "FACEVAE_MODEL": "/srv/bundle",
            "FACEVAE_PORT": "9001",
            "FACEVAE_PROVIDERS": "CUDAExecutionProvider, CPUExecutionProvider",
            "FACEVAE_REQUIRE_GPU": "true",
            "FACEVAE_MAX_BODY_BYTES": "1234",
            "FACEVAE_MAX_BATCH": "4",
            "FACEVAE_MESH_PASSES": "1",
            "FACEVAE_REFINE_STEPS": "0",
            "FACEVAE_LOG_LEVEL": "debug",
        }
    )
    settings = Settings()
    assert settings.model == Path("/srv/bundle")
    assert settings.port == 9001
    assert settings.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert settings.require_gpu is True
    assert (settings.max_body_bytes, settings.max_batch, settings.log_level) == (1234, 4, "debug")
    assert settings.mesh_passes == 1
    assert settings.refine_steps == 0


def test_session_threads_share_the_cores_among_workers(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(defaults, "usable_cores", lambda: 16)
    assert Settings(workers=1).session_threads == 8  # half the cores stay with the event loop and image encoding
    assert Settings(workers=2).session_threads == 4
    assert Settings(workers=32).session_threads == 1
    assert Settings(workers=2, intra_op_threads=3).session_threads == 3
    assert (Settings().worker_count, Settings().session_threads) == (16, 1)  # by default a worker per core


def test_by_default_uvicorn_runs_a_worker_per_usable_core_with_shared_metrics(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch, tiny_bundle: Path
) -> None:
    monkeypatch.setattr(defaults, "usable_cores", lambda: 3)
    seen: list[tuple[int, str | None]] = []
    monkeypatch.setattr(cli, "serve", lambda config: seen.append((config.workers, environ.get(MULTIPROCESS_DIR))))
    cli.main(["--model", str(tiny_bundle)])
    [(workers, folder)] = seen
    assert workers == 3
    assert folder is not None and not Path(folder).exists()  # the workers' metrics folder, gone once they stop
    assert MULTIPROCESS_DIR not in environ


def test_workers_without_a_writable_temporary_folder_stop_with_one_line(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch, tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "serve", lambda config: None)
    monkeypatch.setattr(tempfile, "tempdir", "/proc/no-such-folder")
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--model", str(tiny_bundle), "--workers", "2"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith("facevae-serve: cannot make a folder for the workers' metrics")


def test_cli_flags_override_the_environment_and_reach_the_workers(
    environ: dict[str, str], uvicorn_calls: list[uvicorn.Config], tiny_bundle: Path
) -> None:
    environ["FACEVAE_PORT"] = "9000"
    flags = ["--port", "8123", "--workers", "2", "--require-gpu", "--log-level", "debug"]
    cli.main(["--model", str(tiny_bundle), *flags])
    config = uvicorn_calls[0]
    assert config.app == "service.api.app:create_app"
    assert config.factory is True
    assert (config.host, config.port, config.workers, config.log_level) == ("127.0.0.1", 8123, 2, "debug")
    assert config.log_config["loggers"]["service"]["level"] == "DEBUG"  # type: ignore[index]
    assert config.http is GuardedHttpToolsProtocol
    workers_see = Settings()  # what create_app() builds in each worker process
    assert (workers_see.model, workers_see.port, workers_see.require_gpu) == (tiny_bundle, 8123, True)


@pytest.mark.parametrize(
    "argv", [["--port", "0"], ["--log-level", "chatty"], ["--workers", "many"], ["--mesh-passes", "0"]]
)
def test_cli_rejects_invalid_values(
    environ: dict[str, str], uvicorn_calls: list[uvicorn.Config], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert not uvicorn_calls


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("50000 100000", 1), ("200000 100000", 2), ("max 100000", None), ("garbage", None)],
)
def test_usable_cores_respects_a_cgroup_cpu_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_max: str, expected: int | None
) -> None:
    """A container limited with --cpus must not get one onnxruntime thread per host core."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    quota_file = tmp_path / "cpu.max"
    quota_file.write_text(cpu_max + "\n")
    monkeypatch.setattr(defaults, "CGROUP_CPU_MAX", quota_file)
    assert usable_cores() == (expected or 8)
