"""Command line: every setting is also a flag; flags override `FACEVAE_*` variables and are exported into them,
so uvicorn's worker processes, which build the app from the environment, see the same configuration."""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn
from pydantic import ValidationError

from service.api.settings import ENV_PREFIX, Settings
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    flags = vars(parser.parse_args(argv))
    try:
        settings = Settings(**flags)
    except ValidationError as exc:
        parser.error(str(exc))
    try:
        ModelBundle.load(settings.model)  # here, before any worker: a broken bundle must stop the command
    except BundleError as exc:
        print(f"facevae-serve: cannot serve {settings.model}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    os.environ.update({_env_name(name): str(value) for name, value in flags.items()})
    uvicorn.run(
        "service.api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        lifespan="on",
        access_log=False,  # RequestLogMiddleware logs every request with its duration
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings.log_level),
        timeout_graceful_shutdown=settings.graceful_timeout,
    )
