"""The Open Inference Protocol v2 routes: called by the real `tritonclient.http` and KServe's `InferenceRESTClient`
against a real server on the committed bundle (results equal the in-process networks), and every bad request
answered as the protocol says (`{"error": ...}`, 400 or 404) under the same limits as the other routes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from tritonclient.utils import InferenceServerException

from service.api.app import create_app
from service.api.settings import Settings
from service.core.runtime import FaceModel
from testkit.servers import RunningServer
from tests.conftest import TEST_MAX_BATCH, TEST_MAX_BODY_BYTES


@pytest.fixture(scope="module")
def triton_client(default_server: RunningServer) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(default_server.base_url.removeprefix("http://"))
    yield client
    client.close()


def _faces(model: FaceModel, n: int) -> np.ndarray:
    return np.random.default_rng(3).random((n, model.image_size, model.image_size, 3), dtype=np.float32)


def _latents(model: FaceModel, n: int) -> np.ndarray:
    return np.random.default_rng(4).standard_normal((n, model.z_dim), dtype=np.float32)


# ---- the standard clients -----------------------------------------------------------------------------------------


def test_triton_sees_the_server_and_both_models(
    triton_client: triton.InferenceServerClient, default_model: FaceModel
) -> None:
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    size, z_dim = default_model.image_size, default_model.z_dim
    encoder = triton_client.get_model_metadata("encoder")
    assert encoder["platform"] == "onnxruntime_onnx" and encoder["versions"] == ["1"]
    assert encoder["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, size, size, 3]}]
    assert [(o["name"], o["shape"]) for o in encoder["outputs"]] == [
        ("z_mean", [-1, z_dim]),
        ("z_log_var", [-1, z_dim]),
    ]
    decoder = triton_client.get_model_metadata("decoder", model_version="1")
    assert decoder["inputs"][0]["name"] == "z" and decoder["outputs"][0]["shape"] == [-1, size, size, 3]
    assert triton_client.is_model_ready("decoder") and triton_client.is_model_ready("encoder", "1")
    assert not triton_client.is_model_ready("encoder", "2")


@pytest.mark.parametrize("binary", [True, False])
def test_triton_runs_the_encoder_like_the_model(
    triton_client: triton.InferenceServerClient, default_model: FaceModel, binary: bool
) -> None:
    faces = _faces(default_model, 3)
    image = triton.InferInput("image", list(faces.shape), "FP32")
    image.set_data_from_numpy(faces, binary_data=binary)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("z_mean", "z_log_var")]
    result = triton_client.infer("encoder", [image], outputs=outputs, request_id="r-1")
    z_mean, z_log_var = default_model.encoder_outputs(faces)
    np.testing.assert_allclose(result.as_numpy("z_mean"), z_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("z_log_var"), z_log_var, rtol=1e-5, atol=1e-6)
    assert result.get_response()["id"] == "r-1"


def test_triton_runs_the_decoder_and_returns_only_what_was_asked(
    triton_client: triton.InferenceServerClient, default_model: FaceModel
) -> None:
    z = _latents(default_model, 2)
    latent = triton.InferInput("z", list(z.shape), "FP32")
    latent.set_data_from_numpy(z)
    result = triton_client.infer("decoder", [latent], model_version="1")
    np.testing.assert_allclose(result.as_numpy("image"), default_model.decoder_output(z), rtol=1e-5, atol=1e-6)
    image = triton.InferInput("image", [1, default_model.image_size, default_model.image_size, 3], "FP32")
    image.set_data_from_numpy(_faces(default_model, 1))
    only = triton_client.infer("encoder", [image], outputs=[triton.InferRequestedOutput("z_log_var")])
    assert only.as_numpy("z_mean") is None and only.as_numpy("z_log_var").shape == (1, default_model.z_dim)


def test_triton_gets_the_protocols_errors(
    triton_client: triton.InferenceServerClient, default_model: FaceModel
) -> None:
    z = _latents(default_model, 1)
    latent = triton.InferInput("z", list(z.shape), "FP32")
    latent.set_data_from_numpy(z)
    with pytest.raises(InferenceServerException, match="unknown model 'vae'") as unknown:
        triton_client.infer("vae", [latent])
    assert unknown.value.status() == "404"
    wrong = triton.InferInput("z", [1, 7], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 7), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"has shape \[1, 7\], expected \[N, 128\]"):
        triton_client.infer("decoder", [wrong])


def test_kserve_runs_both_models_like_the_model(default_server: RunningServer, default_model: FaceModel) -> None:
    faces, z = _faces(default_model, 2), _latents(default_model, 2)

    async def call() -> tuple[Any, Any, bool]:
        async with InferenceRESTClient(RESTConfig(protocol="v2", retries=0)) as client:
            image = InferInput("image", list(faces.shape), "FP32")
            image.set_data_from_numpy(faces, binary_data=False)
            encoded = await client.infer(
                default_server.base_url, InferRequest(model_name="encoder", infer_inputs=[image]), model_name="encoder"
            )
            latent = InferInput("z", list(z.shape), "FP32")
            latent.set_data_from_numpy(z, binary_data=True)
            decoded = await client.infer(
                default_server.base_url, InferRequest(model_name="decoder", infer_inputs=[latent]), model_name="decoder"
            )
            return encoded, decoded, await client.is_model_ready(default_server.base_url, "decoder")

    encoded, decoded, ready = asyncio.run(call())
    outputs = {output.name: output.as_numpy() for output in encoded.outputs}
    np.testing.assert_allclose(outputs["z_mean"], default_model.encoder_outputs(faces)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(decoded.outputs[0].as_numpy(), default_model.decoder_output(z), rtol=1e-5, atol=1e-6)
    assert ready


def test_kserve_reads_the_protocols_error(default_server: RunningServer) -> None:
    async def call() -> None:
        async with InferenceRESTClient(RESTConfig(protocol="v2", retries=0)) as client:
            latent = InferInput("z", [1, 2], "FP64")
            latent.set_data_from_numpy(np.zeros((1, 2)), binary_data=False)
            await client.infer(default_server.base_url, InferRequest("decoder", [latent]), model_name="decoder")

    with pytest.raises(httpx.HTTPStatusError, match="datatype 'FP64', expected 'FP32'"):
        asyncio.run(call())


# ---- every bad request: a 4xx with {"error": ...} (in-process, on the tiny bundle) ----------------------------------


def _decode_request(z_dim: int, n: int = 1, **changes: Any) -> dict[str, Any]:
    entry = {"name": "z", "datatype": "FP32", "shape": [n, z_dim], "data": [0.5] * (n * z_dim)}
    return {"inputs": [{**entry, **changes}]}


@pytest.fixture(scope="module")
def z_dim(client: TestClient) -> int:
    return client.get("/metadata").json()["z_dim"]


def _binary(z: np.ndarray, declared: int | None = None, extra: bytes = b"") -> tuple[bytes, dict[str, str]]:
    blob = z.astype("<f4").tobytes()
    size = len(blob) if declared is None else declared
    header = json.dumps(
        {
            "inputs": [
                {"name": "z", "datatype": "FP32", "shape": list(z.shape), "parameters": {"binary_data_size": size}}
            ]
        }
    ).encode()
    return header + blob + extra, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "x"}, "unknown input 'x'"),
        ({"datatype": "INT8"}, "datatype 'INT8', expected 'FP32'"),
        ({"shape": [1, 3]}, "expected [N, "),
        ({"shape": "1x8"}, "shape must be a list of integers"),
        ({"data": [1.0, 2.0]}, "2 values for shape"),
        ({"data": ["a"] * 8}, "data must be numbers"),
        ({"data": None, "parameters": {}}, "neither data nor parameters.binary_data_size"),
    ],
)
def test_a_bad_input_is_400_saying_what_is_wrong(
    client: TestClient, z_dim: int, change: dict[str, Any], message: str
) -> None:
    request = _decode_request(z_dim, **change)
    if change.get("data", ...) is None:
        del request["inputs"][0]["data"]
    answer = client.post("/v2/models/decoder/infer", json=request)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"] and "detail" not in answer.json()


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{not json", {}, 400, "not valid JSON"),
        (b'{"inputs": 3}', {}, 400, 'a list "inputs"'),
        (b'{"inputs": []}', {}, 400, "missing input(s) ['z']"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "99"}, 400, "is not a length within"),
    ],
)
def test_a_bad_body_is_400(client: TestClient, body: bytes, headers: dict[str, str], status: int, message: str) -> None:
    answer = client.post("/v2/models/decoder/infer", content=body, headers=headers)
    assert answer.status_code == status and message in answer.json()["error"]


def test_nan_and_out_of_range_values_are_400(client: TestClient, z_dim: int) -> None:
    nan = json.dumps(_decode_request(z_dim)).replace("0.5", "NaN", 1)
    assert "NaN or infinite" in client.post("/v2/models/decoder/infer", content=nan).json()["error"]
    huge = json.dumps(_decode_request(z_dim)).replace("0.5", "1e39", 1)
    assert client.post("/v2/models/decoder/infer", content=huge).json()["error"].endswith("beyond FP32's range")


def test_binary_tensors_must_match_their_declared_sizes(client: TestClient, z_dim: int) -> None:
    z = np.full((2, z_dim), 0.25, dtype=np.float32)
    body, headers = _binary(z)
    ok = client.post("/v2/models/decoder/infer", content=body, headers=headers)
    assert ok.status_code == 200
    json_answer = client.post("/v2/models/decoder/infer", json=_decode_request(z_dim, 2, data=z.tolist()))
    assert ok.json() == json_answer.json()  # binary and nested JSON data are the same tensor
    for declared, extra, message in ((8, b"", "is not"), (None, b"\0\0\0\0", "4 bytes of binary data after")):
        body, headers = _binary(z, declared, extra)
        answer = client.post("/v2/models/decoder/infer", content=body, headers=headers)
        assert answer.status_code == 400 and message in answer.json()["error"]


def test_binary_output_comes_after_the_json_header(client: TestClient, z_dim: int, face_model: FaceModel) -> None:
    request = {**_decode_request(z_dim), "parameters": {"binary_data_output": True}}
    answer = client.post("/v2/models/decoder/infer", json=request)
    length = int(answer.headers["inference-header-content-length"])
    header = json.loads(answer.content[:length])
    (output,) = header["outputs"]
    assert "data" not in output and output["parameters"]["binary_data_size"] == len(answer.content) - length
    images = np.frombuffer(answer.content[length:], dtype="<f4").reshape(output["shape"])
    np.testing.assert_array_equal(images, face_model.decoder_output(np.full((1, z_dim), 0.5, dtype=np.float32)))


def test_requested_outputs_are_checked(client: TestClient, z_dim: int) -> None:
    for outputs, message in (
        ([{"name": "pixels"}], "unknown output 'pixels'"),
        ([], "non-empty list"),
        ([{"name": "image", "parameters": {"classification": 3}}], "classification extension is not supported"),
    ):
        answer = client.post("/v2/models/decoder/infer", json={**_decode_request(z_dim), "outputs": outputs})
        assert answer.status_code == 400 and message in answer.json()["error"]


def test_unknown_models_and_versions_are_404(client: TestClient, z_dim: int) -> None:
    for path in ("/v2/models/vae", "/v2/models/decoder/versions/2", "/v2/models/vae/ready"):
        answer = client.get(path)
        assert answer.status_code == 404 and "error" in answer.json(), path
    answer = client.post("/v2/models/encoder/versions/0/infer", json=_decode_request(z_dim))
    assert answer.status_code == 404 and "no version '0'" in answer.json()["error"]


def test_the_batch_and_body_limits_apply(client: TestClient, z_dim: int) -> None:
    too_many = client.post("/v2/models/decoder/infer", json=_decode_request(z_dim, TEST_MAX_BATCH + 1))
    assert too_many.status_code == 400
    assert f"batch of {TEST_MAX_BATCH + 1}, the maximum per request is {TEST_MAX_BATCH}" in too_many.json()["error"]
    too_big = client.post("/v2/models/decoder/infer", content=b" " * (TEST_MAX_BODY_BYTES + 1))
    assert too_big.status_code == 413 and "larger than the limit" in too_big.json()["error"]
    wrong_method = client.get("/v2/models/decoder/infer")
    assert wrong_method.status_code == 405 and "use POST" in wrong_method.json()["error"]


def test_infer_is_counted_in_the_metrics(client: TestClient, z_dim: int) -> None:
    def count() -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("http_requests_total{") and '"/v2/models/{name}/infer"' in line and '"200"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = count()
    assert client.post("/v2/models/decoder/infer", json=_decode_request(z_dim)).status_code == 200
    assert count() == before + 1


def test_infer_waits_for_an_admission_slot_like_every_model_route(service_settings: Settings) -> None:
    """With one slot held by a slow inference, another gets the admission's 503 with Retry-After, as {"error"}."""
    settings = service_settings.model_copy(update={"max_in_flight": 1, "queue_timeout": 0.05})
    app = create_app(settings)

    async def scenario() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            model = app.state.model_state.model
            decode = model.decoder_output

            def slow(z: np.ndarray) -> np.ndarray:
                import time

                time.sleep(0.5)
                return decode(z)

            model.decoder_output = slow
            request = _decode_request(model.z_dim)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                first = asyncio.ensure_future(http.post("/v2/models/decoder/infer", json=request))
                await asyncio.sleep(0.1)
                second = await http.post("/v2/models/decoder/infer", json=request)
                return [await first, second]

    first, second = asyncio.run(scenario())
    assert first.status_code == 200
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    assert second.json()["error"].startswith("busy: 1 requests in flight")
