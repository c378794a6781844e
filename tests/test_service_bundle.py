"""The bundle loader refuses a bundle whose sampling statistics or attribute vectors would break /sample or /edit."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.core.bundle import (
    ATTRIBUTES_FILE,
    EDITOR_FILE,
    FORMAT_VERSION,
    LATENT_STATS_FILE,
    MANIFEST_FILE,
    BundleError,
    ModelBundle,
    sha256_file,
    write_json,
)
from service.core.runtime import FaceModel
from tests.tiny_bundle import Z_DIM, add_tiny_editor, editor_graph, save_graph


def _altered(source: Path, target: Path, file: str, change: Callable[[Any], None]) -> Path:
    """A copy of the bundle with one JSON file changed and its sha256 updated: only the content is wrong."""
    shutil.copytree(source, target)
    data = json.loads((target / file).read_text())
    change(data)
    write_json(target / file, data)
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    manifest["files"][file] = sha256_file(target / file)
    write_json(target / MANIFEST_FILE, manifest)
    return target


def _set_upper(stats: dict[str, Any]) -> None:
    stats["covariance_cholesky"][0][1] = 0.5


def _zero_diagonal(stats: dict[str, Any]) -> None:
    stats["covariance_cholesky"][2][2] = 0.0


def _drop_row(stats: dict[str, Any]) -> None:
    stats["covariance_cholesky"].pop()


def _nan(stats: dict[str, Any]) -> None:
    stats["covariance_cholesky"][3][1] = float("nan")


def _short_posterior_std(stats: dict[str, Any]) -> None:
    stats["posterior_std"] = stats["posterior_std"][:-1]


def _unknown_mode(stats: dict[str, Any]) -> None:
    stats["default_mode"] = "posterior"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_set_upper, "covariance_cholesky is not a finite lower-triangular matrix with a positive diagonal"),
        (_zero_diagonal, "covariance_cholesky is not a finite lower-triangular matrix with a positive diagonal"),
        (_nan, "covariance_cholesky is not a finite lower-triangular matrix with a positive diagonal"),
        (_drop_row, f"covariance_cholesky is not {Z_DIM}x{Z_DIM}"),
        (_short_posterior_std, f"posterior_std has {Z_DIM - 1} values, z_dim is {Z_DIM}"),
        (_unknown_mode, "invalid at default_mode"),
    ],
    ids=["upper-triangle", "zero-diagonal", "nan", "short", "posterior-std", "mode"],
)
def test_bad_sampling_statistics_are_refused(
    tiny_bundle: Path, tmp_path: Path, change: Callable[[Any], None], expected: str
) -> None:
    bundle = _altered(tiny_bundle, tmp_path / "bundle", LATENT_STATS_FILE, change)
    with pytest.raises(BundleError, match=f"{LATENT_STATS_FILE}: ") as caught:
        ModelBundle.load(bundle)
    assert expected in str(caught.value)


def test_attribute_without_a_positive_step_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    def no_step(vectors: list[dict[str, Any]]) -> None:
        vectors[0]["step"] = 0.0

    bundle = _altered(tiny_bundle, tmp_path / "bundle", ATTRIBUTES_FILE, no_step)
    with pytest.raises(BundleError, match=f"{ATTRIBUTES_FILE}: invalid at step"):
        ModelBundle.load(bundle)


def test_an_older_format_is_refused_with_the_version(tiny_bundle: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_bundle, tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / MANIFEST_FILE).read_text())
    manifest["format_version"] = 3
    del manifest["preprocess"]["landmark_detector"]  # a format-3 manifest: refused for its version, not the field
    write_json(tmp_path / "bundle" / MANIFEST_FILE, manifest)
    with pytest.raises(BundleError, match=f"format_version 3 is not supported \\(expected {FORMAT_VERSION}\\)"):
        ModelBundle.load(tmp_path / "bundle")


@pytest.mark.parametrize("field", ["landmarks", "landmark_detector"])
def test_a_bundle_without_a_landmark_template_or_its_detector_is_refused(
    tiny_bundle: Path, tmp_path: Path, field: str
) -> None:
    def no_template(manifest: dict[str, Any]) -> None:
        del manifest["preprocess"][field]

    bundle = _altered(tiny_bundle, tmp_path / "bundle", MANIFEST_FILE, no_template)
    with pytest.raises(BundleError, match=r"preprocess\.landmarks .* or preprocess\.landmark_detector is missing"):
        ModelBundle.load(bundle)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda points: points[:4], "landmarks has 4 points, expected 5"),
        (lambda points: [[x, y + 1.0] for x, y in points], "finite fractions in \\[0, 1\\]"),
        (lambda points: [points[1], points[0], *points[2:]], "each left point must be left of its right point"),
        (lambda points: [*points[:3], [points[3][0], 0.1], points[4]], "the eyes must be above the mouth"),
    ],
)
def test_a_landmark_template_that_is_not_a_face_is_refused(
    tiny_bundle: Path, tmp_path: Path, change: Any, message: str
) -> None:
    def alter(manifest: dict[str, Any]) -> None:
        manifest["preprocess"]["landmarks"] = change(manifest["preprocess"]["landmarks"])

    bundle = _altered(tiny_bundle, tmp_path / "bundle", MANIFEST_FILE, alter)
    with pytest.raises(BundleError, match=message):
        ModelBundle.load(bundle)


def test_the_tiny_bundle_s_statistics_load_as_arrays(tiny_bundle: Path) -> None:
    stats = ModelBundle.load(tiny_bundle).latent_stats
    assert stats.cholesky_array.shape == (Z_DIM, Z_DIM)
    assert stats.cholesky_array.dtype == np.float32
    assert stats.check(Z_DIM) is None


@pytest.fixture
def with_editor(tiny_bundle: Path, tmp_path: Path) -> Path:
    shutil.copytree(tiny_bundle, tmp_path / "with-editor")
    return add_tiny_editor(tmp_path / "with-editor")


def test_a_bundle_with_an_editor_loads_and_names_what_it_edits(with_editor: Path) -> None:
    bundle = ModelBundle.load(with_editor)
    assert bundle.edited_by_editor == ["Smiling", "Eyeglasses"]
    assert bundle.editor_path == with_editor / EDITOR_FILE


def test_a_manifest_that_names_an_editor_needs_the_file_and_its_sum(with_editor: Path) -> None:
    (with_editor / EDITOR_FILE).write_bytes(b"not the editor")
    with pytest.raises(BundleError, match=f"{EDITOR_FILE}: sha256 does not match"):
        ModelBundle.load(with_editor)
    (with_editor / EDITOR_FILE).unlink()
    with pytest.raises(BundleError, match=f"{EDITOR_FILE}: missing from bundle"):
        ModelBundle.load(with_editor)


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        (["Smiling", "Beard"], r"editor\.attributes must be distinct attributes of the bundle \(not \['Beard'\]\)"),
        (["Smiling", "Smiling"], r"editor\.attributes must be distinct"),
        (["Smiling", "Eyeglasses", "Male"], r"tensor 'strengths' has shape \['batch', 2\], manifest implies"),
    ],
)
def test_an_editor_must_edit_distinct_attributes_of_the_bundle_one_column_each(
    with_editor: Path, attributes: list[str], message: str
) -> None:
    manifest = json.loads((with_editor / MANIFEST_FILE).read_text())
    manifest["editor"]["attributes"] = attributes
    write_json(with_editor / MANIFEST_FILE, manifest)
    with pytest.raises(BundleError, match=message):
        ModelBundle.load(with_editor)


@pytest.mark.parametrize(
    ("scales", "message"),
    [
        ([1.0], r"editor\.length_scales has 1 values for 2 attributes"),
        ([1.0, 0.0], r"editor\.length_scales\.1: Input should be greater than 0"),
        ([1.0, None], r"editor\.length_scales\.1: Input should be a valid number"),
    ],
)
def test_an_editor_needs_one_positive_length_scale_per_attribute(
    with_editor: Path, scales: list[float | None], message: str
) -> None:
    manifest = json.loads((with_editor / MANIFEST_FILE).read_text())
    manifest["editor"]["length_scales"] = scales
    write_json(with_editor / MANIFEST_FILE, manifest)
    with pytest.raises(BundleError, match=message):
        ModelBundle.load(with_editor)


def test_the_model_refuses_an_editor_that_moves_otherwise_than_its_length_scales_say(with_editor: Path) -> None:
    model = FaceModel.load(with_editor, threads=1)  # the tiny editor keeps its contract: Eyeglasses at 1.5
    z = np.zeros((1, Z_DIM), np.float32)
    moved = np.linalg.norm(model.edit_codes(z, {"Eyeglasses": 2.0}) - z)
    assert moved == pytest.approx(2.0 * model.bundle.attributes["Eyeglasses"].step * 1.5, rel=1e-4)
    manifest = json.loads((with_editor / MANIFEST_FILE).read_text())
    manifest["editor"]["length_scales"] = [1.0, 2.0]
    write_json(with_editor / MANIFEST_FILE, manifest)
    with pytest.raises(BundleError, match=f"{EDITOR_FILE}: moves Eyeglasses 1.05 per unit of strength; its step"):
        FaceModel.load(with_editor, threads=1)


def test_an_editor_of_another_latent_size_is_refused(with_editor: Path) -> None:
    graph = editor_graph(2)
    graph.input[0].type.tensor_type.shape.dim[1].dim_value = Z_DIM + 1
    save_graph(graph, with_editor / EDITOR_FILE, check=False)
    manifest = json.loads((with_editor / MANIFEST_FILE).read_text())
    manifest["files"][EDITOR_FILE] = sha256_file(with_editor / EDITOR_FILE)
    write_json(with_editor / MANIFEST_FILE, manifest)
    with pytest.raises(BundleError, match=f"{EDITOR_FILE}: tensor 'z' has shape"):
        ModelBundle.load(with_editor)
