"""The photos the documentation's examples name (photo.jpg, group.jpg, face.jpg, alice.jpg, ...), made in a folder
from the shared CelebA subset; nothing of CelebA is copied into the repository."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from testkit.phone_photos import IMAGE_DIR, face_files, phone_photo, two_face_photo

GROUP_START = 7000 + 100  # test_service_detection.OTHER_START + 100: its two-face photo with seed 0


def require_subset() -> None:
    if not IMAGE_DIR.is_dir():
        pytest.skip(f"the CelebA subset is missing ({IMAGE_DIR}); the examples need real faces")


def write_example_photos(folder: Path) -> dict[str, Path]:
    """photo.jpg, alice.jpg, bob.jpg (phone-style photos with one face), group.jpg (two faces), and face.jpg and
    crop.jpg (CelebA's own aligned crops, for align=none)."""
    require_subset()
    first, second, third = face_files(3)
    # Two faces the detection tests find both of (tests/test_service_detection.py, seed 0).
    group = face_files(2, GROUP_START)
    photos = {
        "photo.jpg": phone_photo(first, seed=1).jpeg,
        "alice.jpg": phone_photo(second, seed=2).jpeg,
        "bob.jpg": phone_photo(third, seed=3).jpeg,
        "group.jpg": two_face_photo((group[0], group[1]), seed=0).jpeg,
    }
    paths = {}
    for name, data in photos.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    for name in ("face.jpg", "crop.jpg"):
        paths[name] = folder / name
        shutil.copyfile(first, paths[name])
    return paths
