"""Training data: the CelebA layout, bad folders, the split and the framing (no model training here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.core.alignment import frame_face
from service.core.bundle import Preprocess
from tests.images import face_photo
from training.data import (
    ATTRIBUTE_FILE,
    CELEBA_CROP,
    IMAGE_DIR,
    DataError,
    discover,
    load_images,
    read_attribute_file,
    split,
)

NAMES = ["Smiling", "Male", "Eyeglasses"]


def make_celeba(root: Path, count: int = 6, names: list[str] = NAMES) -> Path:
    """A CelebA-layout folder: synthetic JPEGs and an attribute file with CRLF and double spaces."""
    images = root / IMAGE_DIR
    images.mkdir(parents=True)
    rows = []
    for i in range(1, count + 1):
        face_photo().rotate(i).save(images / f"{i:06d}.jpg")
        values = "  ".join("1" if (i + j) % 2 else "-1" for j in range(len(names)))
        rows.append(f"{i:06d}.jpg {values}")
    text = "\r\n".join([str(count), " ".join(names), *rows]) + "\r\n"
    (root / ATTRIBUTE_FILE).write_bytes(text.encode())
    return root


def test_reads_official_layout_with_crlf_and_double_spaces(tmp_path: Path) -> None:
    dataset = discover(make_celeba(tmp_path))
    assert dataset.files == [f"{i:06d}.jpg" for i in range(1, 7)]
    assert dataset.attribute_names == NAMES
    assert dataset.labels is not None
    assert dataset.labels.shape == (6, 3)
    np.testing.assert_array_equal(dataset.labels[0], [1, -1, 1])


def test_plain_folder_without_attributes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(3):
        face_photo().save(tmp_path / f"face{i}.png")
    dataset = discover(tmp_path)
    assert len(dataset.files) == 3
    assert not dataset.has_attributes
    assert dataset.describe()["layout"] == "plain folder"
    assert "no attribute vectors" in caplog.text


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere: data folder does not exist"):
        discover(tmp_path / "nowhere")


def test_empty_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"{tmp_path}: no images"):
        discover(tmp_path)


def test_attribute_file_with_wrong_column_count(tmp_path: Path) -> None:
    root = make_celeba(tmp_path)
    lines = (root / ATTRIBUTE_FILE).read_text().splitlines()
    lines[3] += " 1"
    (root / ATTRIBUTE_FILE).write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"list_attr_celeba.txt: line 4 has 4 values, expected 3"):
        discover(root)


def test_attribute_file_naming_an_unknown_image(tmp_path: Path) -> None:
    root = make_celeba(tmp_path)
    (root / IMAGE_DIR / "000006.jpg").unlink()
    with pytest.raises(DataError, match=r"list_attr_celeba.txt: lists 1 file\(s\) not in .*000006.jpg"):
        discover(root)


def test_attribute_file_with_a_bad_value(tmp_path: Path) -> None:
    root = make_celeba(tmp_path)
    text = (root / ATTRIBUTE_FILE).read_text().replace("000002.jpg -1", "000002.jpg 0", 1)
    (root / ATTRIBUTE_FILE).write_text(text)
    with pytest.raises(DataError, match="line 4 has a value that is not 1 or -1"):
        discover(root)


def test_unreadable_image_stops_the_run_by_default_and_is_skipped_on_request(tmp_path: Path) -> None:
    root = make_celeba(tmp_path)
    (root / IMAGE_DIR / "000003.jpg").write_bytes(b"not a jpeg at all")
    dataset = discover(root)
    preprocess = Preprocess(crop=CELEBA_CROP, size=16)
    with pytest.raises(DataError, match=r"000003.jpg: unreadable image \(1 in all\)"):
        load_images(dataset, preprocess, cache_dir=None)
    images, kept = load_images(dataset, preprocess, cache_dir=None, skip_bad=True)
    assert kept.tolist() == [0, 1, 3, 4, 5]
    assert images.shape == (5, 16, 16, 3)


def test_decoded_faces_are_cached_without_pickle(tmp_path: Path) -> None:
    dataset = discover(make_celeba(tmp_path / "data"))
    preprocess = Preprocess(crop=CELEBA_CROP, size=16)
    first, _ = load_images(dataset, preprocess, cache_dir=tmp_path / "cache")
    (cached,) = (tmp_path / "cache").glob("*.npz")
    with np.load(cached, allow_pickle=False) as stored:
        np.testing.assert_array_equal(stored["images"], first)
    again, _ = load_images(dataset, preprocess, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again, first)


def test_split_is_by_file_name_and_stable() -> None:
    files = [f"{i:06d}.jpg" for i in range(1, 2001)]
    train, val = split(files, 0.05)
    assert 60 < len(val) < 140
    assert sorted([*train, *val]) == list(range(2000))
    # The same file lands on the same side whatever else is in the list.
    _, val_of_half = split(files[::2], 0.05)
    assert {files[::2][i] for i in val_of_half} == {files[i] for i in val if i % 2 == 0}


def test_crop_frames_half_and_full_resolution_alike() -> None:
    full = face_photo(178, 218)
    half = full.resize((89, 109), Image.Resampling.LANCZOS)
    preprocess = Preprocess(crop=CELEBA_CROP, size=64)
    from_full = frame_face(full, preprocess).astype(np.float32)
    from_half = frame_face(half, preprocess).astype(np.float32)
    assert np.abs(from_full - from_half).mean() < 3.0
    # A box shifted by a few percent frames a visibly different patch: the check above can fail.
    shifted = Preprocess(crop=(CELEBA_CROP[0] + 0.05, *CELEBA_CROP[1:3], CELEBA_CROP[3]), size=64)
    assert (
        np.abs(frame_face(half, shifted).astype(np.float32) - from_half).mean()
        > 3 * np.abs(from_full - from_half).mean()
    )


@pytest.mark.parametrize(("width", "height"), [(178, 218), (400, 300), (300, 600), (4000, 3000)])
def test_crop_is_square_on_any_aspect_ratio(width: int, height: int) -> None:
    """A round disc at the box's centre stays round: photos of other shapes are cropped, never squashed."""
    preprocess = Preprocess(crop=CELEBA_CROP, size=64)
    left, top, right, bottom = CELEBA_CROP
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    radius = 0.25 * min((right - left) * width, (bottom - top) * height)
    disc = np.hypot(x - (left + right) / 2 * width, y - (top + bottom) / 2 * height) < radius
    photo = Image.fromarray(np.where(disc[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2))
    framed = frame_face(photo, preprocess)[..., 0] > 127
    rows, columns = np.flatnonzero(framed.any(axis=1)), np.flatnonzero(framed.any(axis=0))
    assert abs(len(rows) - len(columns)) <= 1
    assert len(rows) == pytest.approx(32, abs=2)  # a quarter of the side is the radius: the disc spans half


def test_read_attribute_file_rejects_a_wrong_count(tmp_path: Path) -> None:
    root = make_celeba(tmp_path)
    text = (root / ATTRIBUTE_FILE).read_text().replace("6", "7", 1)
    (root / ATTRIBUTE_FILE).write_text(text)
    with pytest.raises(DataError, match="line 1 says 7 images but 6 are listed"):
        read_attribute_file(root / ATTRIBUTE_FILE)
