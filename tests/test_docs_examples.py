"""Every example marked runnable in README.md and docs/api.md, run as written against a real server, in a temporary
folder holding the photos they name (made from the shared CelebA subset), so the documentation cannot drift.

A block is runnable when the line before its opening fence is `<!-- runnable: ... -->`; `sh` blocks run under
`bash -euo pipefail` with `facevae` on PATH, `python` blocks under this interpreter. The documents' server address
is replaced by the test server's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from testkit.servers import REPO_ROOT, RunningServer, clean_env
from tests.example_photos import write_example_photos

DOCUMENTS = ("README.md", "docs/api.md")
DOCUMENTED_ADDRESS = "127.0.0.1:8000"
RUNNABLE = re.compile(r"^<!-- runnable:[^\n]*-->\n```(sh|python)\n(.*?)^```$", re.M | re.S)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
#: At least this many runnable blocks per document, so dropping the markers cannot quietly turn the test off.
MIN_BLOCKS = {"README.md": 2, "docs/api.md": 10}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
BLOCK_TIMEOUT_S = 300


@dataclass(frozen=True)
class Example:
    document: str
    line: int
    language: str
    code: str

    def __str__(self) -> str:
        return f"{self.document}:{self.line}"


def runnable_examples(document: str) -> list[Example]:
    text = (REPO_ROOT / document).read_text()
    return [
        Example(document, text.count("\n", 0, match.start()) + 2, match.group(1), match.group(2))
        for match in RUNNABLE.finditer(text)
    ]


EXAMPLES = [example for document in DOCUMENTS for example in runnable_examples(document)]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("example-photos")
    write_example_photos(folder)
    return folder


@pytest.fixture(scope="module")
def facevae_on_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `facevae` executable that runs this checkout's client, as the installed console script would."""
    folder = tmp_path_factory.mktemp("bin")
    script = folder / "facevae"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m facevae_client "$@"\n')
    script.chmod(0o755)
    return folder


def _written_files(code: str) -> list[str]:
    return re.findall(r"(?:^|\s)-o (\S+)", code)


@pytest.mark.parametrize("example", EXAMPLES, ids=str)
def test_the_example_runs_as_written(
    example: Example, default_server: RunningServer, photo_folder: Path, facevae_on_path: Path, tmp_path: Path
) -> None:
    if shutil.which("curl") is None and "curl " in example.code:
        pytest.skip("curl is not installed")
    for photo in photo_folder.iterdir():
        shutil.copy(photo, tmp_path / photo.name)
    address = default_server.base_url.removeprefix("http://")
    code = example.code.replace(DOCUMENTED_ADDRESS, address)
    env = clean_env() | {
        "FACEVAE_URL": default_server.base_url,
        "PATH": f"{facevae_on_path}:{clean_env().get('PATH', '')}",
        "PYTHONPATH": str(REPO_ROOT),
    }
    command = ["bash", "-euo", "pipefail", "-c", code] if example.language == "sh" else [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    assert done.returncode == 0, f"{example} failed ({done.returncode}):\n{done.stderr}\n{done.stdout[-2000:]}"
    for name in _written_files(example.code):
        path = tmp_path / name
        assert path.is_file(), f"{example}: {name} was not written"
        if path.suffix in IMAGE_SUFFIXES:
            with Image.open(path) as image:  # an error body saved under an image's name would fail here
                image.verify()


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_documents_keep_their_runnable_examples(document: str) -> None:
    assert len(runnable_examples(document)) >= MIN_BLOCKS[document]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_curl_call_fails_loudly(document: str) -> None:
    """--fail-with-body: an error answer makes curl exit non-zero instead of saving it quietly as a picture."""
    text = (REPO_ROOT / document).read_text()
    calls = [line for _, block in FENCE.findall(text) for line in block.splitlines() if line.startswith("curl ")]
    assert calls and all("--fail-with-body" in line for line in calls), [c for c in calls if "--fail" not in c]


def test_no_python_one_liners_move_latents_around() -> None:
    for document in DOCUMENTS:
        assert "python3 -c" not in (REPO_ROOT / document).read_text(), document


def test_a_failing_recipe_stops_the_script(default_server: RunningServer, tmp_path: Path) -> None:
    """What --fail-with-body buys: the recipe's exit status says the edit failed (curl's 22)."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    command = [
        "curl", "--fail-with-body", "-s", "-o", "beard.png", "-H", "Content-Type: application/json",
        "-d", '{"z": [0], "attributes": {"Beard": 2}}', f"{default_server.base_url}/edit",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=60)
    assert done.returncode == 22
    assert '"detail"' in (tmp_path / "beard.png").read_text()  # the explanation, to read, not a picture
