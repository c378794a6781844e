"""Real photos over HTTP: /detect, and /encode and /edit with align=auto (find the face, align it like training).

The photos are built at test time from the shared CelebA subset the way a phone holds them (testkit/phone_photos.py);
the tests skip when the subset or the detector's package is missing.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.core.alignment import apply
from service.core.compositing import FADE_LEVELS, FEATHER, SHAPE, add_change, detail_fade, keep_detail
from service.core.detection import DetectorUnavailable
from service.core.framing import FaceFramer
from service.core.runtime import FaceModel
from testkit.phone_photos import (
    IMAGE_DIR,
    PhonePhoto,
    enlarged,
    face_files,
    no_face_photo,
    phone_photo,
    two_face_photo,
)
from tests.images import face_photo, image_bytes

pytestmark = pytest.mark.skipif(not IMAGE_DIR.is_dir(), reason=f"the shared CelebA subset is not at {IMAGE_DIR}")

JPEG = {"content-type": "image/jpeg"}


@pytest.fixture(scope="module")
def tilted() -> PhonePhoto:
    """One face, enlarged and tilted somewhere in a 640x480 scene (seed 4 tilts it by more than 10 degrees)."""
    photo = phone_photo(face_files(1, 40)[0], seed=4)
    assert abs(photo.faces[0].tilt_degrees) > 10
    return photo


def test_detect_finds_the_placed_face_with_its_landmarks(client: TestClient, tilted: PhonePhoto) -> None:
    response = client.post("/detect", content=tilted.jpeg, headers=JPEG)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == tilted.size
    face = body["faces"][0]
    left, top, width, height = face["box"]
    placed = tilted.faces[0]
    box_centre = placed.to_face(np.array([[left + width / 2, top + height / 2]]))[0]
    assert 0 < box_centre[0] < placed.face_size[0] and 0 < box_centre[1] < placed.face_size[1]
    assert len(face["landmarks"]) == 5 and 0.5 <= face["score"] <= 1.0
    # The eyes are found where the face was placed: in the original face's coordinates, above the mouth.
    left_eye, right_eye, _, mouth_left, mouth_right = tilted.faces[0].to_face(np.asarray(face["landmarks"]))
    assert left_eye[0] < right_eye[0] and max(left_eye[1], right_eye[1]) < min(mouth_left[1], mouth_right[1])


def test_a_12_megapixel_photo_is_reported_in_its_own_pixels(client: TestClient, tilted: PhonePhoto) -> None:
    """Decoded in draft mode at 1000x750 for detection, but boxes and landmarks come in the photo's 4000x3000."""
    large = enlarged(tilted, quality=25)  # under the test server's 256 KiB body limit
    small_face = client.post("/detect", content=tilted.jpeg, headers=JPEG).json()["faces"][0]
    body = client.post("/detect", content=large.jpeg, headers=JPEG).json()
    assert (body["width"], body["height"]) == (4000, 3000)
    factor = 4000 / 640
    np.testing.assert_allclose(np.asarray(body["faces"][0]["landmarks"]) / factor, small_face["landmarks"], atol=3.0)
    encoded = client.post("/encode", content=large.jpeg, headers=JPEG).json()
    assert encoded["face"] == body["faces"][0]


def test_detect_lists_two_faces_largest_first(client: TestClient) -> None:
    photo = two_face_photo(tuple(face_files(2, 60)), seed=5)
    faces = client.post("/detect", content=photo.jpeg, headers=JPEG).json()["faces"]
    assert len(faces) >= 2
    areas = [face["box"][2] * face["box"][3] for face in faces]
    assert areas == sorted(areas, reverse=True)


def test_a_photo_without_a_face_is_detected_empty_and_refused_by_encode_and_edit(client: TestClient) -> None:
    photo = no_face_photo(seed=2)
    assert client.post("/detect", content=photo.jpeg, headers=JPEG).json()["faces"] == []
    for response in (
        client.post("/encode", content=photo.jpeg, headers=JPEG),
        client.post(
            "/edit", files={"image": ("scene.jpg", photo.jpeg, "image/jpeg")}, data={"attributes": '{"Smiling": 2}'}
        ),
    ):
        assert response.status_code == 422
        assert "no face found in the photo" in response.json()["detail"][0]["msg"]


def test_encode_aligns_the_face_and_says_which_one(
    client: TestClient, face_model: FaceModel, tilted: PhonePhoto
) -> None:
    response = client.post("/encode", params={"seed": 1}, content=tilted.jpeg, headers=JPEG)
    assert response.status_code == 200, response.text
    body = response.json()
    detected = client.post("/detect", content=tilted.jpeg, headers=JPEG).json()["faces"][0]
    assert body["face"] == detected
    framer: FaceFramer = client.app.state.model_state.framer
    framed = framer.frame(tilted.image(), face=0)
    expected = face_model.encode_pixels(framed.pixels[np.newaxis])
    np.testing.assert_allclose(body["z_mean"], expected.z_mean[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(body["code"], expected.code[0], rtol=1e-5, atol=1e-5)
    # align=none crops the box of an aligned crop instead: a different input, no face reported.
    cropped = client.post("/encode", params={"seed": 1, "align": "none"}, content=tilted.jpeg, headers=JPEG).json()
    assert cropped["face"] is None
    assert not np.allclose(cropped["z_mean"], body["z_mean"])


def test_face_picks_another_face_and_out_of_range_is_422(client: TestClient) -> None:
    photo = two_face_photo(tuple(face_files(2, 60)), seed=5)
    faces = client.post("/detect", content=photo.jpeg, headers=JPEG).json()["faces"]
    second = client.post("/encode", params={"face": 1}, content=photo.jpeg, headers=JPEG).json()
    assert second["face"] == faces[1]
    response = client.post("/encode", params={"face": len(faces)}, content=photo.jpeg, headers=JPEG)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["face"]
    assert f"the photo has {len(faces)}" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("params", [{"align": "sideways"}, {"face": -1}, {"face": "first"}])
def test_bad_framing_parameters_are_422(client: TestClient, tilted: PhonePhoto, params: dict[str, object]) -> None:
    response = client.post("/encode", params=params, content=tilted.jpeg, headers=JPEG)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] in params


def _edit(client: TestClient, photo: PhonePhoto, attributes: dict[str, float], **params: object) -> np.ndarray:
    response = client.post(
        "/edit",
        params=params,
        files={"image": ("photo.jpg", photo.jpeg, "image/jpeg")},
        data={"attributes": json.dumps(attributes)},
    )
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def test_edit_of_a_tilted_photo_edits_the_aligned_face(client: TestClient, tilted: PhonePhoto) -> None:
    attributes = {"Smiling": 2}
    code = client.post("/encode", content=tilted.jpeg, headers=JPEG).json()["code"]
    from_latent = client.post("/edit", json={"z": code, "attributes": attributes})
    model_face = _edit(client, tilted, attributes, detail="model")
    np.testing.assert_array_equal(model_face, np.asarray(Image.open(io.BytesIO(from_latent.content))))


def test_detail_keep_is_the_photo_s_own_face_plus_the_model_s_change(
    client: TestClient, face_model: FaceModel, tilted: PhonePhoto
) -> None:
    framer: FaceFramer = client.app.state.model_state.framer
    own = framer.frame(tilted.image()).pixels
    unedited = _edit(client, tilted, {"Smiling": 0})  # detail=keep is the default
    np.testing.assert_array_equal(unedited, own)
    edited = _edit(client, tilted, {"Smiling": 3})
    model_face = _edit(client, tilted, {"Smiling": 3}, detail="model")
    reconstruction = _edit(client, tilted, {"Smiling": 0}, detail="model")
    assert np.abs(model_face.astype(np.int16) - reconstruction).max() > 20  # the edit changes the face
    np.testing.assert_array_equal(edited, keep_detail(own, reconstruction, model_face))


def test_kept_detail_takes_small_changes_onto_the_photo_and_gives_way_to_large_ones() -> None:
    side = 64
    own = np.random.default_rng(0).integers(70, 131, (side, side, 3)).astype(np.uint8)  # the photo's texture
    before = np.full((side, side, 3), 100, np.uint8)
    after = before.copy()
    after[:, : side // 3] += 40  # a large change on the left third
    after[:, -side // 3 :] += 2  # a small one on the right third
    result = keep_detail(own, before, after).astype(np.int16)
    inner = slice(4, -4)
    left, middle, right = (slice(4, side // 3 - 4), slice(side // 3 + 4, -side // 3 - 4), slice(-side // 3 + 4, -4))
    assert np.all(result[inner, left] == 140)  # the model's edited face, not the photo's texture under it
    np.testing.assert_array_equal(result[inner, middle], own[inner, middle])  # unchanged: the photo's own
    assert np.abs(result[inner, right] - (own[inner, right].astype(np.int16) + 2)).max() <= 1  # the photo's, +2


def test_detail_fade_follows_the_size_of_the_change() -> None:
    side = 64
    assert np.all(detail_fade(np.zeros((side, side, 3), np.float32)) == 0)  # nothing changes: all the photo's
    assert np.all(detail_fade(np.full((side, side, 3), FADE_LEVELS, np.float32)) == 1)
    ramp = np.repeat(np.linspace(0, 2 * FADE_LEVELS, side, dtype=np.float32)[np.newaxis, :, np.newaxis], side, 0)
    fade = detail_fade(np.repeat(ramp, 3, axis=2) * np.where(np.arange(3) == 1, -1, 1))  # sign does not matter
    row = fade[side // 2]
    assert np.all(np.diff(row) >= 0) and row[0] == 0 and row[-1] == 1 and 0 < row[side // 4] < 1


def test_output_photo_keeps_the_photo_outside_the_face(client: TestClient, tilted: PhonePhoto) -> None:
    original = np.asarray(tilted.image())
    for detail in ("keep", "model"):
        result = _edit(client, tilted, {"Smiling": 3}, output="photo", detail=detail)
        assert result.shape == original.shape
        changed = np.any(result != original, axis=2)
        rows, columns = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        # Everything changed lies inside the face found by /detect, enlarged by the crop's margin around it.
        left, top, width, height = client.post("/detect", content=tilted.jpeg, headers=JPEG).json()["faces"][0]["box"]
        margin = max(width, height)
        assert rows.min() >= top - margin and rows.max() <= top + height + margin
        assert columns.min() >= left - margin and columns.max() <= left + width + margin
        assert changed.mean() < 0.5


def test_output_photo_unedited_with_kept_detail_is_the_photo(client: TestClient, tilted: PhonePhoto) -> None:
    # The change is added to the photo's own pixels, which are never resampled: no change, the same photo.
    np.testing.assert_array_equal(_edit(client, tilted, {"Smiling": 0}, output="photo"), np.asarray(tilted.image()))


@pytest.mark.parametrize("brighter", [0, 40])
def test_kept_detail_adds_the_change_to_the_photo_s_own_pixels_where_the_face_is(
    client: TestClient, tilted: PhonePhoto, brighter: int
) -> None:
    framer: FaceFramer = client.app.state.model_state.framer
    photo = tilted.image()
    alignment = framer.frame(photo).alignment
    size = alignment.size
    before = np.full((size, size, 3), 100, dtype=np.uint8)
    after = before.copy()
    after[:, : size // 2] += brighter  # the left half of the face square brighter (or not at all)
    result = add_change(photo, before, after, alignment).astype(np.int16)
    # Where each photo pixel lies in the face square: over the left half of the blend's inner part (the step between
    # halves left out) a change as large as 40 grey levels replaces the photo's pixels with the edited face (140);
    # the right half, and everything beyond the blend's rim, stay the photo's own pixels, bit for bit.
    rows, columns = np.indices(result.shape[:2])
    centres = np.stack([columns.ravel(), rows.ravel()], axis=1) + 0.5
    x, y = (apply(alignment.matrix, centres) - size / 2).T.reshape(2, *result.shape[:2])
    radius = ((np.abs(x) ** SHAPE + np.abs(y) ** SHAPE) ** (1 / SHAPE)) / (size / 2)  # 1 on the blend's rim
    original = np.asarray(photo).astype(np.int16)
    left = (radius < 1 - FEATHER - 0.05) & (x < -3)
    assert left.sum() > 2000
    if brighter:
        assert np.all(result[left] == 100 + brighter)
    else:
        np.testing.assert_array_equal(result, original)
    np.testing.assert_array_equal(
        result[(radius < 1 - FEATHER - 0.05) & (x > 3)], original[(radius < 1 - FEATHER - 0.05) & (x > 3)]
    )
    np.testing.assert_array_equal(result[radius > 1.05], original[radius > 1.05])


def test_output_photo_with_a_strip_is_422(client: TestClient, tilted: PhonePhoto) -> None:
    response = client.post(
        "/edit",
        params={"output": "photo", "steps": 3},
        files={"image": ("photo.jpg", tilted.jpeg, "image/jpeg")},
        data={"attributes": '{"Smiling": 2}'},
    )
    assert response.status_code == 422
    assert "output=photo returns one photo" in response.json()["detail"][0]["msg"]


@pytest.fixture
def without_detector(client: TestClient) -> Iterator[None]:
    """The served framer swapped for one whose detector cannot load, as on a server whose detector files are damaged."""

    class Missing:
        def detect(self, image: object) -> list[object]:
            raise DetectorUnavailable("the face detector's network face_landmark.onnx cannot be read (missing)")

    state = client.app.state.model_state
    served = state.framer
    state.framer = FaceFramer(served.preprocess, detector=Missing())  # type: ignore[arg-type]
    yield
    state.framer = served


@pytest.mark.usefixtures("without_detector")
def test_without_the_detector_align_auto_is_501_and_align_none_still_works(client: TestClient) -> None:
    photo = image_bytes(face_photo())
    response = client.post("/encode", content=photo, headers={"content-type": "image/png"})
    assert response.status_code == 501
    assert "align=none" in response.json()["detail"]
    cropped = client.post("/encode", params={"align": "none"}, content=photo, headers={"content-type": "image/png"})
    assert cropped.status_code == 200


def test_metadata_says_face_detection_works(client: TestClient) -> None:
    assert client.get("/metadata").json()["face_detection"] is True


def test_a_template_measured_by_another_detector_is_501_not_a_misaligned_face(client: TestClient) -> None:
    """A bundle whose template another detector measured (a format-3 bundle's was YuNet's) is not aligned with it:
    the landmarks sit elsewhere on the face, so every photo would be framed wrongly without an error."""
    state = client.app.state.model_state
    served = state.framer
    state.framer = FaceFramer(served.preprocess.model_copy(update={"landmark_detector": "yunet"}))
    try:
        response = client.post("/encode", content=image_bytes(face_photo()), headers={"content-type": "image/png"})
        assert client.get("/metadata").json()["face_detection"] is False
    finally:
        state.framer = served
    assert response.status_code == 501
    assert "measured by 'yunet'" in response.json()["detail"]
    assert "python -m training upgrade" in response.json()["detail"]


def test_the_mesh_passes_setting_reaches_the_detector(client: TestClient, tilted: PhonePhoto) -> None:
    """The served framer detects with the setting's passes (2 by default); one pass lands the landmarks nearby but
    not on the same points, so the setting really changes what is run."""
    served = client.app.state.model_state.framer
    assert served.detector.mesh_passes == client.app.state.settings.mesh_passes == 2
    one_pass = FaceFramer(served.preprocess, mesh_passes=1)
    assert one_pass.detector.mesh_passes == 1
    photo = tilted.image()
    twice, once = served.detect(photo)[0].landmarks, one_pass.detect(photo)[0].landmarks
    eye_distance = float(np.linalg.norm(twice[1] - twice[0]))
    assert 0 < np.abs(twice - once).max() < 0.2 * eye_distance
