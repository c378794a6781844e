"""The typed client (`facevae_client`) against a real uvicorn server on the committed bundle: what it returns equals
the in-process model's results, errors come back typed with the API's detail, busy answers are waited out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from facevae_client import AsyncClient, BadRequest, Client, ConnectionFailed, InvalidInput, ServiceUnavailable
from facevae_client.errors import TooManyRequests
from service.core.runtime import FaceModel, Interpolation
from testkit.servers import RunningServer, free_port
from tests.example_photos import write_example_photos


@pytest.fixture(scope="module")
def api(default_server: RunningServer) -> Iterator[Client]:
    with Client(default_server.base_url) as client:
        yield client


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_example_photos(tmp_path_factory.mktemp("photos"))


def test_sample_returns_pillow_faces_and_the_latents_the_model_draws(api: Client, default_model: FaceModel) -> None:
    faces = api.sample(3, seed=7, temperature=0.7)
    assert faces.seed == 7 and len(faces.images) == 3
    assert all(image.size == (64, 64) and image.mode == "RGB" for image in faces.images)
    expected = default_model.sample_latents(3, np.random.default_rng(7), None, 0.7)
    np.testing.assert_allclose(faces.z, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.stack([np.asarray(i) for i in faces.images]), default_model.decode(faces.z))
    assert faces.grid().size == (128, 128) and faces.grid(columns=3).size == (192, 64)


def test_decode_of_one_and_of_several_latents(api: Client, default_model: FaceModel) -> None:
    z = default_model.sample_latents(2, np.random.default_rng(1))
    one = api.decode(z[0])
    assert len(one.images) == 1
    np.testing.assert_array_equal(np.asarray(one.image), default_model.decode(z[:1])[0])
    several = api.decode(z)
    assert len(several.images) == 2 and several.z.shape == (2, default_model.z_dim)


def test_encode_detect_and_edit_a_photo(api: Client, photos: dict[str, Path], default_model: FaceModel) -> None:
    encoding = api.encode(photos["photo.jpg"], seed=3)
    assert encoding.code.shape == encoding.z_mean.shape == (default_model.z_dim,) and encoding.seed == 3
    assert encoding.face is not None and len(encoding.face.landmarks) == 5
    again = api.encode(photos["photo.jpg"].read_bytes(), seed=3)  # bytes instead of a path: the same answer
    np.testing.assert_array_equal(encoding.z, again.z)
    detection = api.detect(photos["group.jpg"])
    assert (detection.width, detection.height) == (640, 480) and len(detection.faces) == 2
    assert detection.faces[0].box[2] > detection.faces[1].box[2]  # largest first

    edited = api.edit(photos["photo.jpg"], {"Mustache": 2}, keep=["Male"])
    expected = default_model.edit(encoding.code, {"Mustache": 2}, keep=["Male"])
    np.testing.assert_allclose(edited.z, expected, atol=1e-4)
    photo_edit = api.edit(photos["photo.jpg"], {"Smiling": 2}, output="photo", image_format="jpeg")
    assert photo_edit.image.size == (640, 480) and photo_edit.image.format == "JPEG"


def test_edit_and_interpolate_latents_equal_the_model(api: Client, default_model: FaceModel) -> None:
    start, end = default_model.sample_latents(2, np.random.default_rng(5))
    strip = api.edit(start, {"smiling": 1.5, "Eyeglasses": -1}, steps=3)
    np.testing.assert_allclose(strip.z, default_model.edit(start, {"Smiling": 1.5, "Eyeglasses": -1}, 3), atol=1e-5)
    walk = api.interpolate(start, end, steps=5, method="lerp")
    np.testing.assert_allclose(walk.z, default_model.interpolate(start, end, 5, Interpolation.LERP), atol=1e-5)
    assert len(walk.images) == 5
    with pytest.raises(TypeError, match="two photos or two latents"):
        api.interpolate(start, b"photo bytes")


def test_interpolate_two_photos(api: Client, photos: dict[str, Path]) -> None:
    walk = api.interpolate(photos["alice.jpg"], photos["bob.jpg"], steps=4)
    assert len(walk.images) == 4
    np.testing.assert_allclose(walk.z[0], api.encode(photos["alice.jpg"]).code, atol=1e-5)


def test_attributes_and_metadata_are_typed(api: Client, default_model: FaceModel) -> None:
    metadata = api.metadata()
    assert (metadata.z_dim, metadata.image_size, metadata.name) == (default_model.z_dim, 64, "celeba-64")
    attributes = {a.name: a for a in api.attributes()}
    assert len(attributes) == 40 and attributes["Smiling"].strength_max == default_model.max_strength
    editor = default_model.bundle.manifest.editor
    assert editor is not None
    learned = {name: a.length_scale for name, a in attributes.items() if a.learned}
    assert learned == dict(zip(editor.attributes, editor.length_scales, strict=True))


def test_errors_are_typed_and_carry_the_apis_detail(api: Client, default_model: FaceModel) -> None:
    z = np.zeros(default_model.z_dim)
    with pytest.raises(InvalidInput) as unknown:
        api.edit(z, {"Beard": 1})
    assert unknown.value.status_code == 422 and "unknown attribute 'Beard'" in str(unknown.value)
    assert unknown.value.detail[0]["loc"] == ["attributes"]
    with pytest.raises(InvalidInput, match="attributes is empty"):
        api.edit(z, {})
    with pytest.raises(InvalidInput, match="z has 3 values, expected 128"):
        api.decode([0.0, 1.0, 2.0])
    with pytest.raises(BadRequest, match="not a recognised image"):
        api.encode(b"not a photo")


def test_an_unreachable_server_is_a_connection_error() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", timeout=2) as client, pytest.raises(ConnectionFailed):
        client.metadata()


@pytest.mark.anyio
async def test_async_client_gives_the_same_answers(default_server: RunningServer, api: Client) -> None:
    async with AsyncClient(default_server.base_url) as client:
        faces = await client.sample(2, seed=11)
        np.testing.assert_array_equal(faces.z, api.sample(2, seed=11).z)
        assert (await client.metadata()).z_dim == faces.z.shape[1]
        with pytest.raises(InvalidInput, match="unknown attribute"):
            await client.edit(faces.z[0], {"Beard": 1})


# ---- busy answers: scripted with httpx's MockTransport, so the waits are exact --------------------------------


def _scripted(statuses: list[tuple[int, str | None]], seen: list[httpx.Request]) -> httpx.MockTransport:
    """Answers with `statuses` in turn ((status, Retry-After)), then 200 with /metadata's body."""
    answers = iter(statuses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, retry_after = next(answers, (200, None))
        if status != 200:
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            return httpx.Response(status, json={"detail": f"busy ({status})"}, headers=headers)
        body = {
            "name": "m",
            "format_version": 4,
            "image_size": 64,
            "z_dim": 8,
            "attribute_count": 0,
            "default_sampling": "trick",
            "providers": {},
            "face_detection": False,
            "service_version": "0",
        }
        return httpx.Response(200, json=body)

    return httpx.MockTransport(handler)


def test_busy_answers_with_retry_after_are_retried_within_the_budget() -> None:
    seen: list[httpx.Request] = []
    with Client("http://facevae", transport=_scripted([(503, "0"), (429, "0")], seen)) as client:
        assert client.metadata().z_dim == 8
    assert len(seen) == 3


def test_a_wait_beyond_the_budget_raises_the_busy_answer_at_once() -> None:
    seen: list[httpx.Request] = []
    transport = _scripted([(503, "0"), (503, "30")], seen)
    with (
        Client("http://facevae", transport=transport, retry_budget=5) as client,
        pytest.raises(ServiceUnavailable) as busy,
    ):
        client.metadata()
    assert len(seen) == 2 and busy.value.detail == "busy (503)"
    seen.clear()
    client = Client("http://facevae", transport=_scripted([(429, "1")], seen), retry_budget=0)
    with client, pytest.raises(TooManyRequests):
        client.metadata()


def test_a_503_without_retry_after_is_not_retried() -> None:
    """A server that is not ready says so without Retry-After: waiting would only delay the error."""
    seen: list[httpx.Request] = []
    client = Client("http://facevae", transport=_scripted([(503, None)], seen))
    with client, pytest.raises(ServiceUnavailable):
        client.metadata()
    assert len(seen) == 1


@pytest.mark.anyio
async def test_async_client_retries_too() -> None:
    seen: list[httpx.Request] = []
    async with AsyncClient("http://facevae", transport=_scripted([(503, "0")], seen)) as client:
        assert (await client.metadata()).name == "m"
    assert len(seen) == 2
