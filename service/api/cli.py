"""Command line: every setting is also a flag; flags override `FACEVAE_*` variables and are exported into them,
so uvicorn's worker processes, which build the app from the environment, see the same configuration."""

from __future__ import annotations

import argparse
import copy
import gc
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import uvicorn
from pydantic import ValidationError
from uvicorn.server import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

from service.api.app import load_model
from service.api.metrics import MULTIPROCESS_DIR
from service.api.protocol import GuardedHttpToolsProtocol
from service.api.settings import ENV_PREFIX, Settings
from service.core import memory
from service.core.bundle import BundleError, ModelBundle


def _env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facevae-serve", description="Serve a face VAE model bundle over HTTP.")
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        # argparse %-formats help strings, so a literal "%" in a description must be doubled.
        help_text = f"{field.description} (env {_env_name(name)}, default: {default})".replace("%", "%%")
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, metavar=name.upper(), help=help_text)
    return parser


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """Uvicorn's logging setup plus the `service` loggers, so worker processes log requests too."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["service"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


class _Supervisor(Multiprocess):
    """Uvicorn's worker supervisor, remembering the signal that stopped it (uvicorn's own exits 0 either way)."""

    stopped_by: signal.Signals | None = None

    def handle_term(self) -> None:
        self.stopped_by = signal.SIGTERM
        super().handle_term()

    def handle_int(self) -> None:
        self.stopped_by = signal.SIGINT
        super().handle_int()


def _fail(message: str, status: int) -> NoReturn:
    print(f"facevae-serve: {message}", file=sys.stderr)
    raise SystemExit(status)


def _check_model(settings: Settings) -> None:
    """Load and warm up the model once here, before any worker: whatever stops it (a broken bundle, an operator
    onnxruntime lacks, a missing provider) stops the command with one line and status 2, for any number of workers."""
    try:
        ModelBundle.load(settings.model)
    except BundleError as exc:
        _fail(f"cannot serve {settings.model}: {exc}", 2)
    try:
        model = load_model(settings)
    except Exception as exc:  # onnxruntime raises its own types; one line whatever they are
        _fail(f"cannot serve {settings.model}: {type(exc).__name__}: {' '.join(str(exc).split())}", 2)
    del model
    gc.collect()
    memory.trim()


def _resignal(sig: signal.Signals | None) -> None:
    """Exit as `sig` would have, as one uvicorn process does (PID 1 ignores it and exits 0)."""
    if sig is not None:
        signal.signal(sig, signal.SIG_DFL)
        signal.raise_signal(sig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    flags = vars(parser.parse_args(argv))
    try:
        settings = Settings(**flags)
    except ValidationError as exc:
        parser.error(str(exc))
    _check_model(settings)
    os.environ.update({_env_name(name): str(value) for name, value in flags.items()})
    os.environ.setdefault("MALLOC_ARENA_MAX", str(memory.ARENA_MAX))  # for the worker processes
    config = uvicorn.Config(
        "service.api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.worker_count,
        http=GuardedHttpToolsProtocol,  # header size, count and time limits (service.api.protocol)
        lifespan="on",
        access_log=False,  # RequestLogMiddleware logs every request with its duration
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings.log_level),
        timeout_graceful_shutdown=settings.graceful_timeout,  # type: ignore[arg-type]  # a float works
    )
    with shared_metrics(config.workers):
        stopped_by = serve(config)
    _resignal(stopped_by)


@contextmanager
def shared_metrics(workers: int) -> Iterator[None]:
    """With several workers, a fresh folder for their metrics (`service.api.metrics`), removed when they stop; an
    operator's own `PROMETHEUS_MULTIPROC_DIR` is used as it is."""
    if workers == 1 or MULTIPROCESS_DIR in os.environ:
        yield
        return
    try:
        metrics = tempfile.TemporaryDirectory(prefix="facevae-metrics-")
    except OSError as exc:
        _fail(f"cannot make a folder for the workers' metrics ({exc}); set {MULTIPROCESS_DIR} or --workers 1", 2)
    with metrics as folder:
        os.environ[MULTIPROCESS_DIR] = folder  # the workers inherit it
        try:
            yield
        finally:
            del os.environ[MULTIPROCESS_DIR]


def serve(config: uvicorn.Config) -> signal.Signals | None:
    """Run uvicorn as `config` says; exit non-zero with one line when it cannot start. Returns the signal that
    stopped several workers' supervisor (which exits 0 after SIGTERM and after a worker failed to start), for the
    command to exit as it; one worker's server re-raises its signal itself."""
    if config.workers == 1:
        server = uvicorn.Server(config)
        server.run()  # re-raises the signal that stopped it
        if not server.started:
            _fail("the server did not start (see the log above)", STARTUP_FAILURE)
        return None
    try:
        sock = config.bind_socket()
    except SystemExit:
        _fail(f"cannot listen on {config.host}:{config.port}", STARTUP_FAILURE)
    supervisor = _Supervisor(config, sockets=[sock])
    supervisor.run()
    if supervisor.stopped_by is not None:
        return supervisor.stopped_by
    failed = [process.exitcode for process in supervisor.processes if process.exitcode]
    if failed:
        _fail(f"a worker stopped with status {failed[0]} (see the log above)", STARTUP_FAILURE)
    return None
