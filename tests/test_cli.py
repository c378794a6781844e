"""The `facevae` command against a real server (in this process, through `main`), and `--help` of every entry point
in a subprocess as a new user runs it."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facevae_client.cli import build_parser, main
from service.core.runtime import FaceModel
from testkit.servers import REPO_ROOT, RunningServer, clean_env
from tests.example_photos import write_example_photos


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_example_photos(tmp_path_factory.mktemp("cli-photos"))


@pytest.fixture
def server_url(default_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """FACEVAE_URL names the server, as a user sets it."""
    monkeypatch.setenv("FACEVAE_URL", default_server.base_url)
    return default_server.base_url


def test_sample_writes_a_reproducible_grid(server_url: str, tmp_path: Path) -> None:
    main(["sample", "-n", "4", "--seed", "7", "-o", str(tmp_path / "grid.png")])
    main(["sample", "-n", "4", "--seed", "7", "-o", str(tmp_path / "again.png")])
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (128, 128) and grid.format == "PNG"
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "again.png").read_bytes()


def test_encode_then_decode_through_a_json_file(
    server_url: str, photos: dict[str, Path], tmp_path: Path, default_model: FaceModel
) -> None:
    main(["encode", str(photos["photo.jpg"]), "--seed", "1", "-o", str(tmp_path / "face.json")])
    encoded = json.loads((tmp_path / "face.json").read_text())
    assert len(encoded["code"]) == default_model.z_dim and encoded["seed"] == 1 and encoded["face"]["box"]
    main(["decode", str(tmp_path / "face.json"), "-o", str(tmp_path / "face.png")])
    with Image.open(tmp_path / "face.png") as face:
        expected = default_model.decode(np.asarray([encoded["code"]], dtype=np.float32))[0]
        np.testing.assert_array_equal(np.asarray(face), expected)


def test_edit_a_photo_and_a_latent(server_url: str, photos: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "smiling.jpg"
    main(["edit", str(photos["photo.jpg"]), "--set", "Smiling=2", "--keep", "Male", "-o", str(output)])
    with Image.open(output) as edited:
        assert edited.format == "JPEG" and edited.size == (64, 64)
    main(["edit", str(photos["photo.jpg"]), "--set", "Smiling=2", "--output-kind", "photo", "-o", str(output)])
    with Image.open(output) as whole:
        assert whole.size == (640, 480)
    main(["encode", str(photos["photo.jpg"]), "-o", str(tmp_path / "face.json")])
    strip = tmp_path / "strip.png"
    main(["edit", str(tmp_path / "face.json"), "--set", "Eyeglasses=3", "--steps", "5", "-o", str(strip)])
    with Image.open(strip) as picture:
        assert picture.size == (5 * 64, 64)


def test_interpolate_writes_one_strip(server_url: str, photos: dict[str, Path], tmp_path: Path) -> None:
    main(
        ["interpolate", str(photos["alice.jpg"]), str(photos["bob.jpg"]), "--steps", "6", "-o", str(tmp_path / "w.png")]
    )
    with Image.open(tmp_path / "w.png") as walk:
        assert walk.size == (6 * 64, 64)


def test_an_error_is_explained_and_no_file_is_written(
    server_url: str, photos: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "beard.png"
    with pytest.raises(SystemExit) as exit_:
        main(["edit", str(photos["photo.jpg"]), "--set", "Beard=2", "-o", str(output)])
    assert exit_.value.code == 1 and not output.exists()
    err = capsys.readouterr().err
    assert "422" in err and "unknown attribute 'Beard'" in err
    with pytest.raises(SystemExit):
        main(["edit", str(photos["photo.jpg"]), "--set", "Smiling", "-o", str(output)])
    assert "expected NAME=STRENGTH" in capsys.readouterr().err


def test_interpolate_refuses_a_photo_and_a_latent(server_url: str, photos: dict[str, Path], tmp_path: Path) -> None:
    main(["encode", str(photos["photo.jpg"]), "-o", str(tmp_path / "face.json")])
    with pytest.raises(SystemExit, match="two photos or two latent files"):
        main(["interpolate", str(photos["bob.jpg"]), str(tmp_path / "face.json"), "-o", str(tmp_path / "w.png")])


def test_url_flag_and_unreachable_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--url", "http://127.0.0.1:9", "sample", "-o", str(tmp_path / "x.png")])
    assert exit_.value.code == 1 and not (tmp_path / "x.png").exists()
    assert "facevae sample:" in capsys.readouterr().err


# ---- --help of every entry point ---------------------------------------------------------------------------------

SCRIPTS = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(action.choices)


FACEVAE_COMMANDS = _subcommands(build_parser())


def _help(*command: str) -> str:
    done = subprocess.run(command, cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:"), done.stdout
    return done.stdout


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_console_script_explains_itself(name: str) -> None:
    """The [project.scripts] entry as installed: its function, called with --help under the script's name."""
    module, function = SCRIPTS[name].split(":")
    code = f"import sys; sys.argv[0] = {name!r}; from {module} import {function}; {function}()"
    _help(sys.executable, "-c", code, "--help")


@pytest.mark.parametrize("package", ["service", "training", "facevae_client"])
def test_every_python_m_entry_point_explains_itself(package: str) -> None:
    _help(sys.executable, "-m", package, "--help")


def test_service_help_lists_every_option_with_its_variable() -> None:
    text = _help(sys.executable, "-m", "service", "--help")
    assert "--mesh-passes" in text and "FACEVAE_MESH_PASSES" in text and "docs/benchmarks.md" in text


def test_every_training_command_explains_itself(capsys: pytest.CaptureFixture[str]) -> None:
    """In this process (one TensorFlow import instead of one per command; `python -m training --help` runs above)."""
    from training.cli import build_parser as build_training_parser

    parser = build_training_parser()
    for command in _subcommands(parser):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([command, "--help"])
        assert exit_.value.code == 0 and capsys.readouterr().out.startswith("usage:"), command


@pytest.mark.parametrize("command", FACEVAE_COMMANDS)
def test_every_facevae_command_explains_itself(command: str) -> None:
    _help(sys.executable, "-m", "facevae_client", command, "--help")
