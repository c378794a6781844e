"""Every endpoint and every class of bad input, through the ASGI app with httpx (Starlette's TestClient)."""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.api.settings import Settings
from service.core.alignment import frame_face
from service.core.bundle import FORMAT_VERSION
from service.core.imaging import GRID_PADDING
from service.core.runtime import FaceModel
from service.core.sessions import CUDA
from tests.conftest import TEST_MAX_BATCH, TEST_MAX_BODY_BYTES
from tests.images import face_photo, image_bytes, png_claiming_size
from tests.tiny_bundle import ATTRIBUTES, IMAGE_SIZE, Z_DIM, add_tiny_editor

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
Z = [0.1 * i for i in range(Z_DIM)]
#: The synthetic photos here have no face a detector would find: they test decoding and the crop path
#: (align=none); detection and alignment have tests of their own (test_service_detection.py, test_service_faces.py).
CROPPED = {"align": "none"}


def messages(response: Any) -> str:
    """The error text of a 4xx body: `detail` is a string, or FastAPI's list of validation errors."""
    detail = response.json()["detail"]
    return detail if isinstance(detail, str) else " | ".join(error["msg"] for error in detail)


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def grid_side(cells: int) -> int:
    return cells * (IMAGE_SIZE + GRID_PADDING) + GRID_PADDING


def upload(data: bytes, content_type: str = "image/png") -> dict[str, Any]:
    return {"files": {"image": ("face", data, content_type)}}


# ---- health, metadata, attributes ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health/live", "/v2/health/live"])
def test_liveness(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.json() == {"live": True}


@pytest.mark.parametrize("path", ["/health/ready", "/v2/health/ready"])
def test_ready_once_loaded(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.json()["ready"] is True


@pytest.mark.parametrize("path", ["/health/ready", "/v2/health/ready", "/sample", "/metadata"])
def test_not_ready_before_the_lifespan_has_loaded_the_model(service_settings: Settings, path: str) -> None:
    unstarted = TestClient(create_app(service_settings))  # no `with`: the lifespan never runs
    response = unstarted.get(path)
    assert response.status_code == 503
    assert response.json()["detail"] == "model not loaded yet"


def test_what_startup_loaded_stays_out_of_full_collections_until_shutdown(service_settings: Settings) -> None:
    with TestClient(create_app(service_settings)) as started:
        assert started.get("/health/ready").status_code == 200
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # the model, the app and the libraries: a full pass would walk them all
    assert gc.get_freeze_count() == 0  # collectable again once stopped


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this onnxruntime may really use CUDA")
def test_require_gpu_without_cuda_is_loaded_but_not_ready(service_settings: Settings) -> None:
    settings = service_settings.model_copy(update={"require_gpu": True})
    with TestClient(create_app(settings)) as gpu_client:
        ready = gpu_client.get("/health/ready")
        assert ready.status_code == 503
        assert "require_gpu is set but CUDA is not in use" in ready.json()["detail"]
        assert gpu_client.get("/v2/health/ready").status_code == 503
        assert gpu_client.get("/sample").status_code == 503
        assert gpu_client.get("/metadata").json()["providers"]["decoder"] == ["CPUExecutionProvider"]


def test_metadata(client: TestClient, face_model: FaceModel) -> None:
    response = client.get("/metadata")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "tiny-test"
    assert body["default_sampling"] == face_model.bundle.latent_stats.default_mode
    assert (body["format_version"], body["image_size"], body["z_dim"], body["attribute_count"]) == (
        FORMAT_VERSION,
        IMAGE_SIZE,
        Z_DIM,
        len(ATTRIBUTES),
    )
    assert body["providers"] == {
        "encoder": face_model.encoder.get_providers(),
        "decoder": face_model.decoder.get_providers(),
    }
    assert body["service_version"]


def test_attributes(client: TestClient, face_model: FaceModel) -> None:
    response = client.get("/attributes")
    assert response.status_code == 200
    listed = response.json()["attributes"]
    assert [item["name"] for item in listed] == list(ATTRIBUTES)
    smiling = face_model.bundle.attributes["Smiling"]
    assert listed[0] == {
        "name": "Smiling",
        "auc": smiling.auc,
        "norm": smiling.norm,
        "method": smiling.method,
        "step": smiling.step,
        "length_scale": 1.0,
        "projection_std": smiling.projection_std,
        "positives": smiling.positives,
        "negatives": smiling.negatives,
        "strength_min": -5.0,
        "strength_max": 5.0,
        "learned": False,
    }


def test_openapi_documents_every_endpoint_and_both_edit_bodies(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/encode", "/decode", "/sample", "/edit", "/attributes", "/metadata", "/health/ready"):
        assert path in spec["paths"]
    edit_body = spec["paths"]["/edit"]["post"]["requestBody"]["content"]
    assert set(edit_body) == {"application/json", "multipart/form-data"}
    assert edit_body["application/json"]["schema"]["examples"]
    sample_content = spec["paths"]["/sample"]["get"]["responses"]["200"]["content"]
    assert {"image/png", "image/jpeg", "image/webp", "application/json"} <= set(sample_content)


# ---- /sample ---------------------------------------------------------------------------------------------------


def test_sample_default_is_one_png_face(client: TestClient) -> None:
    response = client.get("/sample")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert png_size(response.content) == (IMAGE_SIZE, IMAGE_SIZE)
    assert int(response.headers["x-seed"]) >= 0


def test_sample_same_seed_gives_same_bytes(client: TestClient) -> None:
    first = client.get("/sample", params={"seed": 5, "n": 4})
    assert first.content == client.get("/sample", params={"seed": 5, "n": 4}).content
    assert first.content != client.get("/sample", params={"seed": 6, "n": 4}).content


def test_sample_modes_draw_from_the_same_noise(client: TestClient, face_model: FaceModel) -> None:
    def latents(**params: str) -> np.ndarray:
        response = client.get("/sample", params={"seed": 1, **params}, headers={"accept": "application/json"})
        assert response.status_code == 200
        return np.asarray(response.json()["z"])

    stats = face_model.bundle.latent_stats
    prior, textbook, trick = latents(mode="prior"), latents(mode="textbook"), latents(mode="trick")
    np.testing.assert_allclose(textbook, stats.mean_array + stats.std_scalar * prior, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(trick, stats.mean_array + prior @ stats.cholesky_array.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(latents(), latents(mode=stats.default_mode))


def test_sample_several_is_a_grid_by_default(client: TestClient) -> None:
    response = client.get("/sample", params={"n": 4, "seed": 0})
    assert png_size(response.content) == (grid_side(2), grid_side(2))


def test_sample_json_lists_each_face_with_its_latent_and_seed(client: TestClient) -> None:
    response = client.get("/sample", params={"n": 3, "seed": 9}, headers={"accept": "application/json"})
    assert response.status_code == 200
    body = response.json()
    assert body["seed"] == 9
    assert body["media_type"] == "image/png"
    assert len(body["images"]) == len(body["z"]) == 3
    assert all(len(z) == Z_DIM for z in body["z"])
    assert png_size(base64.b64decode(body["images"][0])) == (IMAGE_SIZE, IMAGE_SIZE)
    single = client.get("/sample", params={"seed": 9, "n": 3, "grid": False})
    assert single.json()["z"] == body["z"]  # several separate faces are always JSON


@pytest.mark.parametrize(
    ("params", "accept", "media_type", "magic"),
    [
        ({}, "image/jpeg", "image/jpeg", b"\xff\xd8\xff"),
        ({}, "image/webp", "image/webp", b"RIFF"),
        ({"format": "jpeg"}, None, "image/jpeg", b"\xff\xd8\xff"),
        ({"format": "webp"}, "*/*", "image/webp", b"RIFF"),
        ({}, "text/html;q=0.9, image/*;q=0.8", "image/png", PNG_MAGIC),
        ({}, "image/png;q=0.1, image/jpeg", "image/jpeg", b"\xff\xd8\xff"),
    ],
)
def test_image_format_from_accept_or_format(
    client: TestClient, params: dict[str, str], accept: str | None, media_type: str, magic: bytes
) -> None:
    headers = {"accept": accept} if accept else {}
    response = client.get("/sample", params={"seed": 1, **params}, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.content.startswith(magic)


@pytest.mark.parametrize(
    ("path", "accept"),
    [("/sample", "text/html"), ("/sample?format=webp", "image/png"), ("/sample?n=2&grid=false", "image/png")],
)
def test_unsupported_accept_is_406(client: TestClient, path: str, accept: str) -> None:
    response = client.get(path, headers={"accept": accept})
    assert response.status_code == 406
    assert "cannot respond with any of Accept" in messages(response)


def test_encode_only_produces_json(client: TestClient) -> None:
    response = client.post(
        "/encode", params=CROPPED, content=image_bytes(face_photo()), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200
    refused = client.post(
        "/encode",
        params=CROPPED,
        content=image_bytes(face_photo()),
        headers={"content-type": "image/png", "accept": "image/png"},
    )
    assert refused.status_code == 406
    assert "application/json" in messages(refused)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"n": TEST_MAX_BATCH + 1}, f"the maximum per request is {TEST_MAX_BATCH}"),
        ({"n": 0}, "greater than or equal to 1"),
        ({"temperature": "nan"}, "finite number"),
        ({"mode": "posterior"}, "'trick', 'textbook' or 'prior'"),
        ({"seed": -1}, "greater than or equal to 0"),
        ({"colour": "blue"}, "Extra inputs are not permitted"),
    ],
)
def test_sample_bad_parameters_are_422(client: TestClient, params: dict[str, Any], expected: str) -> None:
    response = client.get("/sample", params=params)
    assert response.status_code == 422
    assert expected in messages(response)


# ---- /encode ---------------------------------------------------------------------------------------------------


def test_encode_raw_body_and_multipart_agree(client: TestClient, face_model: FaceModel) -> None:
    data = image_bytes(face_photo())
    raw = client.post("/encode", params={"seed": 3, **CROPPED}, content=data, headers={"content-type": "image/png"})
    multipart = client.post("/encode", params={"seed": 3, **CROPPED}, **upload(data))
    assert raw.status_code == multipart.status_code == 200
    assert raw.json() == multipart.json()
    body = raw.json()
    expected = face_model.encode_pixels(frame_face(face_photo(), face_model.bundle.preprocess)[np.newaxis])
    np.testing.assert_allclose(body["z_mean"], expected.z_mean[0], rtol=1e-6)
    np.testing.assert_allclose(body["z_log_var"], expected.z_log_var[0], rtol=1e-6)
    np.testing.assert_allclose(body["code"], expected.code[0], rtol=1e-6)
    assert body["seed"] == 3


def test_encode_seed_makes_z_deterministic(client: TestClient) -> None:
    def z(seed: int) -> list[float]:
        return client.post("/encode", params={"seed": seed, **CROPPED}, **upload(image_bytes(face_photo()))).json()["z"]

    assert z(1) == z(1)
    assert z(1) != z(2)


def test_encode_applies_the_manifest_crop(client: TestClient) -> None:
    """The same face at two resolutions frames identically; shifting the face changes the code."""

    def z_mean(photo: Image.Image) -> np.ndarray:
        return np.asarray(client.post("/encode", params=CROPPED, **upload(image_bytes(photo))).json()["z_mean"])

    photo = face_photo(178, 218)
    half = photo.resize((89, 109), Image.Resampling.LANCZOS)
    shifted = photo.transform(photo.size, Image.Transform.AFFINE, (1, 0, 30, 0, 1, 0))
    assert np.abs(z_mean(photo) - z_mean(half)).max() < 0.05
    assert np.abs(z_mean(photo) - z_mean(shifted)).max() > 0.1


@pytest.mark.parametrize(
    ("mode", "image_format"),
    [("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("I;16", "PNG"), ("CMYK", "JPEG"), ("RGB", "GIF")],
)
def test_encode_accepts_any_image_mode(client: TestClient, mode: str, image_format: str) -> None:
    photo = face_photo().convert("RGBA" if mode == "LA" else "RGB").convert(mode)
    response = client.post("/encode", params=CROPPED, **upload(image_bytes(photo, image_format)))
    assert response.status_code == 200, response.text
    assert len(response.json()["z_mean"]) == Z_DIM


def test_encode_respects_exif_orientation(client: TestClient) -> None:
    upright = face_photo(218, 178)
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"

    def z_mean(data: bytes) -> list[float]:
        return client.post("/encode", params=CROPPED, **upload(data)).json()["z_mean"]

    assert z_mean(image_bytes(stored, "PNG", exif=exif)) == z_mean(image_bytes(upright))
    assert z_mean(image_bytes(stored)) != z_mean(image_bytes(upright))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"this is text, not a picture", "not a recognised image"),
        (b"", "not a recognised image"),
        (image_bytes(face_photo(), "JPEG")[:1500], "truncated"),
    ],
    ids=["text", "empty", "truncated-jpeg"],
)
@pytest.mark.parametrize("as_multipart", [False, True], ids=["raw", "multipart"])
def test_encode_corrupt_image_is_400(client: TestClient, data: bytes, expected: str, as_multipart: bool) -> None:
    if as_multipart:
        response = client.post("/encode", params=CROPPED, **upload(data))
    else:
        response = client.post("/encode", params=CROPPED, content=data, headers={"content-type": "image/png"})
    assert response.status_code == 400
    assert expected in messages(response)


@pytest.mark.parametrize("content_type", ["application/pdf", "text/plain", None])
def test_encode_wrong_content_type_is_415(client: TestClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/encode", params=CROPPED, content=b"%PDF-1.4", headers=headers)
    assert response.status_code == 415
    assert f"unsupported Content-Type {content_type or '(none)'}" in messages(response)


@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (20_000, 10)], ids=["bomb", "absurd-side"])
def test_encode_huge_dimensions_are_413(client: TestClient, width: int, height: int) -> None:
    response = client.post(
        "/encode", params=CROPPED, content=png_claiming_size(width, height), headers={"content-type": "image/png"}
    )
    assert response.status_code == 413
    assert messages(response).startswith("image too large to decode")


def test_multipart_without_the_image_field_is_422(client: TestClient) -> None:
    response = client.post(
        "/encode", params=CROPPED, files={"photo": ("face.png", image_bytes(face_photo()), "image/png")}
    )
    assert response.status_code == 422
    assert "Field required" in messages(response)


# ---- body size limit -------------------------------------------------------------------------------------------


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield b"\0" * min(size, total - start)


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("/encode", {"content": _chunks(TEST_MAX_BODY_BYTES + 1), "headers": {"content-type": "image/png"}}),
        ("/decode", {"content": _chunks(2 * TEST_MAX_BODY_BYTES), "headers": {"content-type": "application/json"}}),
        ("/encode", {"content": b"\0" * (TEST_MAX_BODY_BYTES + 1), "headers": {"content-type": "image/png"}}),
        ("/edit", {"files": {"image": ("face.png", b"\0" * TEST_MAX_BODY_BYTES, "image/png")}}),
    ],
    ids=["chunked-no-content-length", "chunked-json", "content-length", "multipart"],
)
def test_body_over_the_limit_is_413(client: TestClient, path: str, kwargs: dict[str, Any]) -> None:
    response = client.post(path, **kwargs)
    assert response.status_code == 413
    assert messages(response) == f"request body is larger than the limit of {TEST_MAX_BODY_BYTES} bytes"


def test_chunked_body_under_the_limit_is_read_whole(client: TestClient) -> None:
    data = image_bytes(face_photo())
    streamed = client.post(
        "/encode",
        params={"seed": 1, **CROPPED},
        content=iter([data[:100], data[100:]]),
        headers={"content-type": "image/png"},
    )
    assert streamed.status_code == 200
    assert streamed.json() == client.post("/encode", params={"seed": 1, **CROPPED}, **upload(data)).json()


# ---- /decode ---------------------------------------------------------------------------------------------------


def test_decode_one_latent_is_one_image(client: TestClient, face_model: FaceModel) -> None:
    response = client.post("/decode", json={"z": Z})
    assert response.status_code == 200
    pixels = np.asarray(Image.open(io.BytesIO(response.content)))
    np.testing.assert_array_equal(pixels, face_model.decode(np.asarray([Z], dtype=np.float32))[0])


def test_decode_several_latents_is_a_json_list_or_a_grid(client: TestClient) -> None:
    several = [Z, [0.0] * Z_DIM, [-v for v in Z]]
    listed = client.post("/decode", json={"z": several})
    assert listed.status_code == 200
    assert listed.headers["content-type"] == "application/json"
    assert len(listed.json()["images"]) == 3
    assert listed.json()["seed"] is None
    np.testing.assert_allclose(listed.json()["z"], several, rtol=1e-6)
    grid = client.post("/decode", params={"grid": True}, json={"z": several})
    assert png_size(grid.content) == (grid_side(2), grid_side(2))


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize(
    ("request_args", "faces"),
    [
        ({"method": "POST", "url": "/decode", "json": {"z": Z}}, 1),
        ({"method": "POST", "url": "/decode", "json": {"z": [Z, Z]}}, 2),
        ({"method": "GET", "url": "/sample", "params": {"seed": 1}}, 1),
        ({"method": "GET", "url": "/sample", "params": {"seed": 1, "n": 4}}, 4),
        ({"method": "POST", "url": "/edit", "json": {"z": Z, "attributes": {ATTRIBUTES[0]: 1}}}, 1),
        (
            {
                "method": "POST",
                "url": "/edit",
                "params": {"steps": 3},
                "json": {"z": Z, "attributes": {ATTRIBUTES[0]: 1}},
            },
            3,
        ),
    ],
    ids=["decode-1", "decode-2", "sample-1", "sample-4", "edit-1", "edit-strip"],
)
def test_one_face_is_computed_on_the_event_loop_and_more_in_the_thread_pool(
    client: TestClient, face_model: FaceModel, monkeypatch: pytest.MonkeyPatch, request_args: dict[str, Any], faces: int
) -> None:
    """A single face costs less on the loop than the hand-off to a thread; longer work must leave the loop free."""
    decode = face_model.decode
    calls: list[tuple[int, bool]] = []

    def recording_decode(z: np.ndarray) -> np.ndarray:
        calls.append((len(z), _on_event_loop()))
        return decode(z)

    monkeypatch.setattr(face_model, "decode", recording_decode)
    assert client.request(**request_args).status_code == 200
    assert calls == [(faces, faces == 1)]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (json.dumps({"z": Z[:7]}), f"z has 7 values, expected {Z_DIM}"),
        (json.dumps({"z": [Z, Z[:5]]}), f"z[1] has 5 values, expected {Z_DIM}"),
        (json.dumps({"z": [Z] * (TEST_MAX_BATCH + 1)}), f"the maximum per request is {TEST_MAX_BATCH}"),
        ('{"z": [NaN, 0, 0, 0, 0, 0, 0, 0]}', "finite number"),
        ('{"z": [[0, 0, 0, 0, 0, 0, 0, Infinity]]}', "finite number"),
        (json.dumps({"z": []}), "at least 1 item"),
        (json.dumps({"z": ["a"] * Z_DIM}), "valid number"),
        (json.dumps({"z": Z, "extra": 1}), "Extra inputs are not permitted"),
        ('{"z": [0.1,', "JSON"),
    ],
    ids=["short", "ragged", "too-many", "nan", "infinity", "empty", "strings", "unknown-field", "broken-json"],
)
def test_decode_bad_latents_are_422(client: TestClient, body: str, expected: str) -> None:
    response = client.post("/decode", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert expected in messages(response)


# ---- /edit -----------------------------------------------------------------------------------------------------


def _edit_json(client: TestClient, attributes: dict[str, float], **params: Any) -> Any:
    return client.post(
        "/edit", params=params, json={"z": Z, "attributes": attributes}, headers={"accept": "application/json"}
    )


def test_edit_moves_z_by_strength_times_step(client: TestClient, face_model: FaceModel) -> None:
    response = _edit_json(client, {"Smiling": 1.5, "Eyeglasses": -1})
    assert response.status_code == 200
    smiling, glasses = face_model.bundle.attributes["Smiling"], face_model.bundle.attributes["Eyeglasses"]
    expected = np.asarray(Z) + 1.5 * smiling.step * smiling.unit - glasses.step * glasses.unit
    np.testing.assert_allclose(response.json()["z"], [expected], rtol=1e-5, atol=1e-6)


def test_edit_keep_leaves_the_kept_attribute_s_projection_alone(client: TestClient, face_model: FaceModel) -> None:
    male = face_model.bundle.attributes["Male"]
    body = {"z": Z, "attributes": {"Smiling": 2}, "keep": ["male"]}
    response = client.post("/edit", json=body, headers={"accept": "application/json"})
    assert response.status_code == 200
    edited = np.asarray(response.json()["z"][0])
    assert (edited - np.asarray(Z)) @ male.unit == pytest.approx(0.0, abs=1e-5)
    plain = np.asarray(_edit_json(client, {"Smiling": 2}).json()["z"][0])
    assert not np.allclose(edited, plain)


def test_edit_multipart_keep_matches_json(client: TestClient) -> None:
    data = image_bytes(face_photo())
    code = client.post("/encode", params=CROPPED, **upload(data)).json()["code"]
    form = {"attributes": '{"Smiling": 2}', "keep": '["Male"]'}
    from_photo = client.post("/edit", params={**CROPPED, "detail": "model"}, data=form, **upload(data))
    assert from_photo.status_code == 200
    body = {"z": code, "attributes": {"Smiling": 2}, "keep": ["Male"]}
    assert from_photo.content == client.post("/edit", json=body).content


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        (["Beard"], "unknown attribute 'Beard'"),
        (["Smiling"], "cannot both edit and keep Smiling"),
        ("Male", "Input should be a valid array"),
        ([1], "Input should be a valid string"),
    ],
    ids=["unknown", "edited", "not-a-list", "not-names"],
)
def test_edit_bad_keep_is_422(client: TestClient, keep: object, expected: str) -> None:
    response = client.post("/edit", json={"z": Z, "attributes": {"Smiling": 1}, "keep": keep})
    assert response.status_code == 422
    assert expected in messages(response)


def test_edit_attribute_names_ignore_case(client: TestClient) -> None:
    images = {
        name: client.post("/edit", json={"z": Z, "attributes": {name: 2}}).content for name in ("Male", "male", "MALE")
    }
    assert len(set(images.values())) == 1
    assert images["Male"].startswith(PNG_MAGIC)


def test_edit_strip_has_the_unedited_face_in_the_middle(client: TestClient) -> None:
    image = client.post("/edit", params={"steps": 5}, json={"z": Z, "attributes": {"Smiling": 2}})
    assert png_size(image.content) == (grid_side(5), grid_side(1))
    body = _edit_json(client, {"Smiling": 2}, steps=5).json()
    assert len(body["images"]) == len(body["z"]) == 5
    np.testing.assert_allclose(body["z"][2], Z, rtol=1e-6)
    middle = np.asarray(body["z"][2])
    np.testing.assert_allclose(np.asarray(body["z"][0]) - middle, middle - np.asarray(body["z"][4]), atol=1e-5)
    decoded = client.post("/decode", json={"z": Z})
    assert base64.b64decode(body["images"][2]) == decoded.content


def test_edit_multipart_photo_edits_its_code(client: TestClient) -> None:
    data = image_bytes(face_photo())
    code = client.post("/encode", params=CROPPED, **upload(data)).json()["code"]
    attributes = {"Smiling": 1.5, "Male": -1}
    params = {**CROPPED, "detail": "model"}  # the model's own face: what an edit of the latent gives
    from_photo = client.post("/edit", params=params, data={"attributes": json.dumps(attributes)}, **upload(data))
    assert from_photo.status_code == 200
    assert from_photo.headers["content-type"] == "image/png"
    assert from_photo.content == client.post("/edit", json={"z": code, "attributes": attributes}).content


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"Beard": 1}, "unknown attribute 'Beard'; valid names: Smiling, Male, Eyeglasses"),
        ({"Smiling": 5.5}, "strength 5.5 for 'Smiling' is outside [-5.0, 5.0]"),
        ({"Smiling": -6}, "is outside [-5.0, 5.0]"),
        ({}, "attributes is empty: name at least one attribute"),
        ({"Smiling": 5, "smiling": 5, "SMILING": 5}, "'Smiling' is given more than once"),
    ],
)
def test_edit_bad_attributes_are_422(client: TestClient, attributes: dict[str, float], expected: str) -> None:
    response = client.post("/edit", json={"z": Z, "attributes": attributes})
    assert response.status_code == 422
    assert expected in messages(response)


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ({"attributes": '{"Smiling": '}, "Invalid JSON"),
        ({"attributes": '{"Smiling": NaN}'}, "finite number"),
        ({"attributes": '{"Wings": 1}'}, "unknown attribute 'Wings'"),
        ({}, "Field required"),
        ({"attributes": '{"Smiling": 1}', "strength": "2"}, "Extra inputs are not permitted"),
        ({"attributes": '{"Smiling": 1}', "keep": "Male"}, "Invalid JSON"),
        ({"attributes": '{"Smiling": 1}', "keep": '["Wings"]'}, "unknown attribute 'Wings'"),
    ],
    ids=["broken-json", "nan", "unknown", "missing", "unknown-field", "keep-not-json", "keep-unknown"],
)
def test_edit_multipart_bad_attributes_are_422(client: TestClient, form: dict[str, str], expected: str) -> None:
    response = client.post("/edit", params=CROPPED, data=form, **upload(image_bytes(face_photo())))
    assert response.status_code == 422
    assert expected in messages(response)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [(4, "steps must be odd"), (1, "greater than or equal to 3"), (TEST_MAX_BATCH + 2, "maximum per request")],
)
def test_edit_bad_steps_are_422(client: TestClient, steps: int, expected: str) -> None:
    response = client.post("/edit", params={"steps": steps}, json={"z": Z, "attributes": {"Male": 1}})
    assert response.status_code == 422
    assert expected in messages(response)


def test_edit_wrong_latent_length_is_422(client: TestClient) -> None:
    response = client.post("/edit", json={"z": [*Z, 0.0], "attributes": {"Male": 1}})
    assert response.status_code == 422
    assert f"z has {Z_DIM + 1} values, expected {Z_DIM}" in messages(response)


def test_edit_corrupt_photo_is_400(client: TestClient) -> None:
    response = client.post("/edit", params=CROPPED, data={"attributes": '{"Male": 1}'}, **upload(b"GIF89a broken"))
    assert response.status_code == 400
    assert "corrupt" in messages(response) or "not a recognised image" in messages(response)


def test_edit_wrong_content_type_is_415(client: TestClient) -> None:
    response = client.post("/edit", content=b"z=1", headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    assert "application/json or multipart/form-data" in messages(response)


# ---- logging ---------------------------------------------------------------------------------------------------


def test_each_request_is_logged_with_status_and_duration(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="service.access"):
        client.get("/health/live")
        client.get("/sample", params={"n": 0})
    lines = [record.getMessage() for record in caplog.records if record.name == "service.access"]
    assert lines[0].startswith("GET /health/live 200 ") and lines[0].endswith(" ms")
    assert lines[1].startswith("GET /sample 422 ")


# ---- requests once answered wrongly: each now a clear 4xx ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/decode", "/edit"])
def test_latents_beyond_float32_are_422_not_500(client: TestClient, path: str) -> None:
    body: dict[str, Any] = {"z": [1e39, *Z[1:]]}
    if path == "/edit":
        body["attributes"] = {"Smiling": 1}
    response = client.post(path, json=body, headers={"accept": "application/json"})
    assert response.status_code == 422
    assert "beyond float32's range" in messages(response)


@pytest.mark.parametrize("path", ["/decode", "/edit"])
def test_latent_endpoints_answer_a_wrong_content_type_and_bad_json_alike(client: TestClient, path: str) -> None:
    wrong_type = client.post(path, content=b'{"z": [0]}', headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 415
    assert "unsupported Content-Type text/plain" in wrong_type.json()["detail"]
    bad_json = client.post(path, content=b"{bad", headers={"content-type": "application/json"})
    assert bad_json.status_code == 422
    assert bad_json.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize("query", ["temperature=%0A5", "n=%202", "seed=1%20"])
def test_numbers_wrapped_in_white_space_are_422(client: TestClient, query: str) -> None:
    response = client.get(f"/sample?{query}")
    assert response.status_code == 422
    assert "white space around it" in messages(response)


@pytest.mark.parametrize("path", ["/metadata", "/attributes"])
def test_endpoints_without_options_refuse_query_parameters(client: TestClient, path: str) -> None:
    response = client.get(path, params={"verbose": "1"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "verbose"]


def test_a_32_bit_integer_tiff_is_400_not_a_black_face(client: TestClient) -> None:
    values = (np.arange(32 * 32, dtype=np.int32).reshape(32, 32) * 100_000).astype(np.int32)
    data = image_bytes(Image.fromarray(values), "TIFF")
    response = client.post("/encode", params=CROPPED, content=data, headers={"content-type": "image/tiff"})
    assert response.status_code == 400
    assert "32-bit integer pixels" in response.json()["detail"]


def test_docs_page_works_offline(client: TestClient) -> None:
    """Every script, style sheet and icon /docs loads comes from this server, none from a CDN."""
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(url.startswith("/docs-assets/") for url in assets), assets
    for url in assets:
        assert client.get(url).status_code == 200, url
    assert "https://" not in page.text.replace(client.app.openapi_url or "", "")


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus' text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if all(found.get(key) == value for key, value in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_by_route_and_status_and_time_the_model(client: TestClient) -> None:
    before = client.get("/metrics")
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")
    labels = {"method": "POST", "endpoint": "/decode", "status": "200"}
    ok = _metric(before.text, "http_requests_total", **labels)
    refused = _metric(before.text, "http_requests_total", method="POST", endpoint="/decode", status="422")
    runs = _metric(before.text, "facevae_model_batch_size_count", network="decoder")
    faces = _metric(before.text, "facevae_model_batch_size_sum", network="decoder")
    assert client.post("/decode", json={"z": [Z, Z]}, headers={"accept": "application/json"}).status_code == 200
    assert client.post("/decode", json={"z": [0.0]}).status_code == 422
    client.get("/no/such/path")
    after = client.get("/metrics").text
    assert _metric(after, "http_requests_total", **labels) == ok + 1
    assert _metric(after, "http_requests_total", method="POST", endpoint="/decode", status="422") == refused + 1
    assert _metric(after, "http_requests_total", method="GET", endpoint="unmatched", status="404") >= 1
    assert _metric(after, "facevae_model_batch_size_count", network="decoder") == runs + 1
    assert _metric(after, "facevae_model_batch_size_sum", network="decoder") == faces + 2  # one run of two latents
    assert _metric(after, "http_request_duration_seconds_count", method="POST", endpoint="/decode") >= 2
    assert "http_requests_in_flight" in after


def test_openapi_states_the_loaded_model_s_limits(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    text = json.dumps(spec)
    assert "x-latent" not in text and "x-batch" not in text and "x-strength" not in text
    decode = spec["paths"]["/decode"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    one, several = (
        decode["properties"]["z"]["anyOf"]
        if "anyOf" in decode["properties"]["z"]
        else decode["properties"]["z"]["oneOf"]
    )
    assert (one["minItems"], one["maxItems"]) == (Z_DIM, Z_DIM)
    assert several["maxItems"] == TEST_MAX_BATCH
    sample = {p["name"]: p["schema"] for p in spec["paths"]["/sample"]["get"]["parameters"]}
    assert sample["n"]["maximum"] == TEST_MAX_BATCH
    edit = spec["paths"]["/edit"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    strengths = edit["properties"]["attributes"]["additionalProperties"]
    assert (strengths["minimum"], strengths["maximum"]) == (-5.0, 5.0)


@pytest.fixture(scope="module")
def bundled_client() -> Iterator[TestClient]:
    """The app serving the committed default bundle, whose attributes the examples name."""
    with TestClient(create_app(Settings(intra_op_threads=1))) as test_client:
        yield test_client


@pytest.mark.parametrize("path", ["/decode", "/edit", "/interpolate"])
def test_every_openapi_example_succeeds_as_given(bundled_client: TestClient, path: str) -> None:
    spec = bundled_client.get("/openapi.json").json()
    examples = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["examples"]
    assert examples
    for example in examples:
        latents = [example[key] for key in ("z", "start", "end") if key in example]
        assert len(np.ravel(latents)) % 128 == 0  # the bundle's latent length, not the placeholder's
        response = bundled_client.post(path, json=example, headers={"accept": "application/json"})
        assert response.status_code == 200, (example, response.text)


# ---- /interpolate --------------------------------------------------------------------------------------------------


def _interpolate(client: TestClient, start: list[float], end: list[float], **params: object) -> Any:
    response = client.post(
        "/interpolate", params=params, json={"start": start, "end": end}, headers={"accept": "application/json"}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_interpolate_walks_from_one_face_to_the_other(client: TestClient, face_model: FaceModel) -> None:
    start, end = Z, [-v for v in Z]
    body = _interpolate(client, start, end, steps=5)
    path = np.asarray(body["z"])
    assert path.shape == (5, Z_DIM)
    np.testing.assert_allclose(path[0], start, atol=1e-5)
    np.testing.assert_allclose(path[-1], end, atol=1e-5)
    first = base64.b64decode(body["images"][0])
    assert first == client.post("/decode", json={"z": start}).content  # the strip's ends are the faces themselves


def test_slerp_keeps_the_distance_from_the_mean_and_lerp_does_not(client: TestClient, face_model: FaceModel) -> None:
    mean = face_model.bundle.latent_stats.mean_array
    rng = np.random.default_rng(3)
    start, end = (mean + rng.standard_normal(Z_DIM).astype(np.float32) for _ in range(2))
    distances = {}
    for method in ("slerp", "lerp"):
        path = np.asarray(_interpolate(client, start.tolist(), end.tolist(), steps=9, method=method)["z"])
        distances[method] = np.linalg.norm(path - mean, axis=1)
    ends = np.linalg.norm(start - mean), np.linalg.norm(end - mean)
    assert distances["slerp"][4] == pytest.approx(np.mean(ends), rel=0.15)  # no shrinking midpoint ...
    assert distances["lerp"][4] < 0.85 * min(ends)  # ... which the straight line has


def test_interpolate_strip_is_one_picture_of_steps_faces(client: TestClient) -> None:
    response = client.post("/interpolate", params={"steps": 4}, json={"start": Z, "end": Z})
    assert response.status_code == 200
    assert png_size(response.content) == (4 * IMAGE_SIZE + 5 * GRID_PADDING, IMAGE_SIZE + 2 * GRID_PADDING)


@pytest.mark.parametrize(
    ("params", "body", "message"),
    [
        ({}, {"start": Z, "end": Z[:-1]}, f"end has {Z_DIM - 1} values, expected {Z_DIM}"),
        ({"steps": 1}, {"start": Z, "end": Z}, "greater than or equal to 2"),
        ({"steps": TEST_MAX_BATCH + 1}, {"start": Z, "end": Z}, f"the maximum per request is {TEST_MAX_BATCH}"),
        ({"method": "cubic"}, {"start": Z, "end": Z}, "'slerp' or 'lerp'"),
        ({}, {"start": Z}, "Field required"),
    ],
)
def test_interpolate_bad_input_is_422(
    client: TestClient, params: dict[str, object], body: dict[str, object], message: str
) -> None:
    response = client.post("/interpolate", params=params, json=body)
    assert response.status_code == 422
    assert message in messages(response)


def test_interpolate_between_two_photos_and_a_wrong_content_type(client: TestClient) -> None:
    files = {
        "start": ("a.png", image_bytes(face_photo()), "image/png"),
        "end": ("b.png", image_bytes(face_photo().transpose(Image.Transpose.FLIP_LEFT_RIGHT)), "image/png"),
    }
    response = client.post("/interpolate", params={**CROPPED, "steps": 3}, files=files)
    assert response.status_code == 200, response.text
    assert response.content.startswith(PNG_MAGIC)
    refused = client.post("/interpolate", content=b"{}", headers={"content-type": "text/plain"})
    assert refused.status_code == 415


@pytest.fixture(scope="module")
def editor_client(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An app serving the tiny bundle with a learned editor for Smiling and Eyeglasses."""
    path = tmp_path_factory.mktemp("editor") / "bundle"
    shutil.copytree(tiny_bundle, path)
    settings = Settings(model=add_tiny_editor(path), intra_op_threads=1, max_batch=TEST_MAX_BATCH)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_attributes_say_which_the_editor_learned_and_how_far_it_lengthens_them(editor_client: TestClient) -> None:
    listed = {
        item["name"]: (item["learned"], item["length_scale"])
        for item in editor_client.get("/attributes").json()["attributes"]
    }
    assert listed == {"Smiling": (True, 1.0), "Male": (False, 1.0), "Eyeglasses": (True, 1.5)}


def test_edit_of_a_latent_and_its_strip_go_through_the_editor(editor_client: TestClient) -> None:
    model: FaceModel = editor_client.app.state.model_state.model
    z = np.random.default_rng(8).normal(size=Z_DIM).astype(np.float32)
    body = {"z": z.tolist(), "attributes": {"smiling": 2.0, "Male": 1.0}, "keep": ["Eyeglasses"]}
    response = editor_client.post("/edit", json=body, headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    expected = model.edit_codes(z[np.newaxis], {"smiling": 2.0, "Male": 1.0}, ["Eyeglasses"])
    np.testing.assert_allclose(response.json()["z"], expected.tolist(), atol=1e-5)
    vectors_alone = model.without_editor()
    assert vectors_alone.editor is None
    assert not np.allclose(expected, vectors_alone.edit_codes(z[np.newaxis], {"smiling": 2.0, "Male": 1.0}))

    strip = editor_client.post("/edit?steps=3", json=body, headers={"Accept": "application/json"})
    assert strip.status_code == 200, strip.text
    np.testing.assert_allclose(strip.json()["z"][1], z, atol=1e-6)
    np.testing.assert_allclose(strip.json()["z"][2], expected[0], atol=1e-5)
