"""The layering README's "Architecture" section describes: the core has no HTTP in it, and the configuration loads
no model code. Each check runs in a fresh interpreter, so what other tests imported cannot hide an import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WEB_STACK = ("fastapi", "starlette", "uvicorn")


def _modules_loaded_by(code: str) -> set[str]:
    """Top-level names of every module in sys.modules after running `code` in a new interpreter at the repo root."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{name.partition('.')[0] for name in sys.modules}})))"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_the_core_and_all_its_modules_import_no_web_framework() -> None:
    loaded = _modules_loaded_by(
        "import importlib, pkgutil, service.core\n"
        "names = [m.name for m in pkgutil.walk_packages(service.core.__path__, 'service.core.')]\n"
        "assert 'service.core.operations' in names and 'service.core.runtime' in names, names\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
    )
    assert "onnxruntime" in loaded  # the core really was imported
    assert not loaded & set(WEB_STACK), sorted(loaded & set(WEB_STACK))


def test_loading_the_configuration_loads_no_model_code() -> None:
    loaded = _modules_loaded_by("from service.api.settings import Settings\nSettings()")
    assert "pydantic_settings" in loaded
    assert "onnxruntime" not in loaded
