"""The photos the documentation's examples name (photo.jpg, group.jpg, face.jpg, alice.jpg, ...), made in a folder
from the shared CelebA subset; nothing of CelebA is copied into the repository."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.phone_photos import IMAGE_DIR, face_files, phone_photo, two_face_photo


def require_subset() -> None:
    if not IMAGE_DIR.is_dir():
        pytest.skip(f"the CelebA subset is missing ({IMAGE_DIR}); the examples need real faces")


def write_example_photos(folder: Path) -> dict[str, Path]:
    """photo.jpg, alice.jpg, bob.jpg (phone-style photos with one face), group.jpg (two faces), and face.jpg and
    crop.jpg (CelebA's own aligned crops, for align=none)."""
    require_subset()
    first, second, third, fourth = face_files(4)
    photos = {
        "photo.jpg": phone_photo(first, seed=1).jpeg,
        "alice.jpg": phone_photo(second, seed=2).jpeg,
        "bob.jpg": phone_photo(third, seed=3).jpeg,
        "group.jpg": two_face_photo((first, fourth), seed=4).jpeg,
    }
    paths = {}
    for name, data in photos.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    for name in ("face.jpg", "crop.jpg"):
        paths[name] = folder / name
        shutil.copyfile(first, paths[name])
    return paths
