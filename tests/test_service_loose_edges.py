"""Cheap requests once answered wrongly or expensively, each now refused with a clear 4xx (in process, the tiny
bundle); the same attacks against a real server are in test_service_hostile.py."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.core.imaging import MAX_JPEG_SCANS, PhotoDecoder
from service.core.runtime import MAX_LATENT
from testkit.hostile import progressive_jpeg, repeated_scan_jpeg
from tests.images import image_bytes, png_claiming_size
from tests.tiny_bundle import ATTRIBUTES, Z_DIM

Z = [0.1] * Z_DIM
CROPPED = {"align": "none"}
ATTRIBUTE = ATTRIBUTES[0]


def _messages(response: Any) -> str:
    detail = response.json()["detail"]
    return detail if isinstance(detail, str) else " | ".join(error["msg"] for error in detail)


# ---- 1. bounded work per photo ---------------------------------------------------------------------------------


def test_a_jpeg_with_repeated_scans_is_refused_before_decoding(client: TestClient) -> None:
    data = repeated_scan_jpeg(1000, 1000, repeats=200)  # 2000 scans cost 33 s at 16 megapixels
    started = time.perf_counter()
    response = client.post("/detect", content=data, headers={"content-type": "image/jpeg"})
    assert response.status_code == 413
    assert f"at most {MAX_JPEG_SCANS} are decoded" in _messages(response)
    assert "210 scans" in _messages(response)
    assert time.perf_counter() - started < 1.0


def test_an_ordinary_progressive_jpeg_still_decodes(client: TestClient) -> None:
    data = progressive_jpeg(200, 150)
    response = client.post("/encode", params=CROPPED, content=data, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text


def test_the_413_quotes_the_configured_pixel_limit_not_pillows(client: TestClient) -> None:
    response = client.post(
        "/encode", params=CROPPED, content=png_claiming_size(10_000, 10_000), headers={"content-type": "image/png"}
    )
    assert response.status_code == 413
    assert "100000000 pixels" in _messages(response)
    assert str(client.app.state.settings.max_pixels) in _messages(response)
    assert "80000000" not in _messages(response)


# ---- 4. one memory budget for the whole photo -------------------------------------------------------------------


def test_a_held_photo_slot_covers_its_decode_and_keeps_others_waiting() -> None:
    decoder = PhotoDecoder(concurrent=1)
    data = image_bytes(Image.new("RGB", (32, 32)))
    order: list[str] = []

    def other() -> None:
        decoder.decode(data)
        order.append("other decoded")

    with decoder.hold():
        decoder.decode(data)  # the thread's own slot: no deadlock
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.2)
        order.append("first done")
    thread.join(5)
    assert order == ["first done", "other decoded"]


# ---- 7. wrong answers and loose edges ---------------------------------------------------------------------------


def test_keep_naming_one_attribute_in_several_cases_is_422(client: TestClient) -> None:
    name = ATTRIBUTES[1]
    body = {"z": Z, "attributes": {ATTRIBUTE: 1}, "keep": [name, name.upper(), name.lower()]}
    response = client.post("/edit", json=body, headers={"accept": "application/json"})
    assert response.status_code == 422
    assert "is given more than once (names ignore case)" in _messages(response)


def test_detect_gives_the_photos_own_size_when_decoded_smaller(client: TestClient) -> None:
    data = image_bytes(Image.new("RGB", (4001, 3001), (120, 110, 100)), "JPEG", quality=50)
    response = client.post("/detect", content=data, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
    assert (response.json()["width"], response.json()["height"]) == (4001, 3001)


@pytest.mark.parametrize("value", [3e38, -2 * MAX_LATENT])
def test_latents_beyond_what_the_decoder_handles_are_422(client: TestClient, value: float) -> None:
    response = client.post("/decode", json={"z": [value] * Z_DIM})
    assert response.status_code == 422
    assert f"beyond ±{MAX_LATENT:g}" in _messages(response)


@pytest.mark.parametrize(
    "body",
    [
        {"z": [True, *Z[1:]], "attributes": {ATTRIBUTE: 1}},
        {"z": ["0.5", *Z[1:]], "attributes": {ATTRIBUTE: 1}},
        {"z": Z, "attributes": {ATTRIBUTE: True}},
        {"z": Z, "attributes": {ATTRIBUTE: "1.5"}},
    ],
    ids=["bool-latent", "string-latent", "bool-strength", "string-strength"],
)
def test_booleans_and_numeric_strings_are_not_numbers(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post("/edit", json=body)
    assert response.status_code == 422
    assert "Input should be a valid number" in _messages(response)


def test_a_huge_attribute_name_is_not_echoed_whole(client: TestClient) -> None:
    name = "A" * 200_000
    response = client.post("/edit", json={"z": Z, "attributes": {name: 1}})
    assert response.status_code == 422
    assert "unknown attribute" in _messages(response)
    assert len(response.content) < 10_000


def test_a_repeated_multipart_field_is_422_not_last_wins(client: TestClient) -> None:
    photo = image_bytes(Image.new("RGB", (64, 64)))
    fields = [("attributes", (None, f'{{"{ATTRIBUTE}": 1}}')), ("attributes", (None, f'{{"{ATTRIBUTE}": -1}}'))]
    response = client.post("/edit", params=CROPPED, files=[("image", ("face.png", photo, "image/png")), *fields])
    assert response.status_code == 422
    assert "the field 'attributes' is given twice" in _messages(response)


def test_a_multipart_strength_must_be_a_number(client: TestClient) -> None:
    photo = image_bytes(Image.new("RGB", (64, 64)))
    files = {"image": ("face.png", photo, "image/png"), "attributes": (None, f'{{"{ATTRIBUTE}": true}}')}
    assert client.post("/edit", params=CROPPED, files=files).status_code == 422


def _metric(text: str, endpoint: str, status: str) -> float:
    for line in text.splitlines():
        if (
            line.startswith("http_requests_total{")
            and f'endpoint="{endpoint}"' in line
            and f'status="{status}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_refusals_before_routing_count_under_their_endpoint(client: TestClient) -> None:
    limit = client.app.state.settings.max_body_bytes
    before = _metric(client.get("/metrics").text, "/encode", "413")
    response = client.post("/encode", content=b"x" * (limit + 1), headers={"content-type": "image/png"})
    assert response.status_code == 413
    assert _metric(client.get("/metrics").text, "/encode", "413") == before + 1


@pytest.mark.parametrize("path", ["/", "/web/index.html", "/web/app.js"])
def test_every_page_file_has_the_content_security_policy(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/health/live", "/metadata", "/no-such-path"])
def test_every_answer_says_nosniff(client: TestClient, path: str) -> None:
    assert client.get(path).headers["x-content-type-options"] == "nosniff"
