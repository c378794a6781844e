"""The Open Inference Protocol v2 (REST), as KServe and Triton speak it, beside the service's own routes.

The bundle's two networks are served as two models, `encoder` (FP32 images [N, size, size, 3] in [0, 1] ->
`z_mean`, `z_log_var` [N, z_dim]) and `decoder` (FP32 `z` [N, z_dim] -> `image` [N, size, size, 3] in [0, 1]),
so `tritonclient.http` and KServe's `InferenceRESTClient` call them unchanged. Tensors come as JSON `data` or in
Triton's binary tensor data extension (a JSON header of `Inference-Header-Content-Length` bytes, then the raw
little-endian tensors); outputs are binary when asked for. Errors are the protocol's `{"error": "..."}`: 400 for a
bad request, 404 for an unknown model or version. Requests pass the same body-size limit and admission control
as every other route, and a batch may hold at most FACEVAE_MAX_BATCH items.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.api.dependencies import LoadedModel, ReadyModel, StateDep
from service.core.bundle import DECODER_INPUT, DECODER_OUTPUT, ENCODER_INPUT, ENCODER_OUTPUTS
from service.core.operations import run_network
from service.core.runtime import FaceModel


class ProtocolErrorMessage(BaseModel):
    error: str = Field(examples=["unknown model 'vae'; this server has 'encoder' and 'decoder'"])


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(description="-1 is the batch dimension.", examples=[[-1, 128]])


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    ready: bool


class InferInputSchema(BaseModel):
    name: str = Field(examples=["z"])
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(examples=[[1, 128]])
    data: list[Any] | None = Field(None, description="Row-major values, flat or nested (or binary, see parameters).")
    parameters: dict[str, Any] | None = Field(None, description='{"binary_data_size": bytes} for binary data.')


class InferRequestSchema(BaseModel):
    """The protocol's inference request (documentation: the body is parsed by hand, as JSON may be followed by
    binary tensors)."""

    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description='e.g. {"binary_data_output": true}')
    inputs: list[InferInputSchema]
    outputs: list[dict[str, Any]] | None = Field(
        None, description='[{"name": ..., "parameters": {"binary_data": ...}}]'
    )


class InferResponseSchema(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[dict[str, Any]]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "A bad inference request; error says what is wrong.",
        404: "Unknown model or version.",
        405: "Another method is needed.",
        408: "The request body stalled.",
        413: "The body is over the size limit.",
        503: "Not ready, or busy (with Retry-After).",
        504: "The request ran longer than the request timeout.",
    }
    return {code: {"model": ProtocolErrorMessage, "description": descriptions[code]} for code in codes}


router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY = "application/octet-stream"
DATATYPE = "FP32"
PLATFORM = "onnxruntime_onnx"
#: The only version of each model: the bundle is served as one immutable whole.
VERSION = "1"
#: Little-endian float32, the binary extension's layout of FP32.
FP32 = np.dtype("<f4")


class ProtocolError(Exception):
    """An error the protocol reports as `{"error": message}` with `status` (400 or 404)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: list[int]  # -1 for the batch dimension


@dataclass(frozen=True)
class Network:
    """One of the bundle's networks as a protocol model."""

    inputs: list[Tensor]
    outputs: list[Tensor]

    def metadata(self, name: str) -> dict[str, Any]:
        def describe(tensors: list[Tensor]) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": DATATYPE, "shape": t.shape} for t in tensors]

        return {
            "name": name,
            "versions": [VERSION],
            "platform": PLATFORM,
            "inputs": describe(self.inputs),
            "outputs": describe(self.outputs),
        }


def networks(model: FaceModel) -> dict[str, Network]:
    image = Tensor(ENCODER_INPUT, [-1, model.image_size, model.image_size, 3])
    return {
        "encoder": Network([image], [Tensor(name, [-1, model.z_dim]) for name in ENCODER_OUTPUTS]),
        "decoder": Network([Tensor(DECODER_INPUT, [-1, model.z_dim])], [Tensor(DECODER_OUTPUT, image.shape)]),
    }


def _network(model: FaceModel, name: str, version: str | None) -> Network:
    found = networks(model).get(name)
    if found is None:
        raise ProtocolError(f"unknown model {name!r}; this server has 'encoder' and 'decoder'", 404)
    if version is not None and version != VERSION:
        raise ProtocolError(f"model {name!r} has no version {version!r}; its only version is {VERSION!r}", 404)
    return found


# ---- reading a request --------------------------------------------------------------------------------------------


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON part and the binary part of a request (the binary part is empty without the extension's header)."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {header_length!r} is not a length within the {len(body)}-byte body")
        json_part, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        request = json.loads(json_part)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"the inference request is not valid JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise ProtocolError('the inference request must be a JSON object with a list "inputs"')
    return request, binary


def _shape(entry: dict[str, Any], expected: Tensor, max_batch: int) -> tuple[int, ...]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ProtocolError(f"input {expected.name!r}: shape must be a list of integers")
    fixed = expected.shape[1:]
    if len(shape) != len(expected.shape) or shape[1:] != fixed or shape[0] < 1:
        wanted = "[N, " + ", ".join(map(str, fixed)) + "]"
        raise ProtocolError(f"input {expected.name!r} has shape {shape}, expected {wanted} with N >= 1")
    if shape[0] > max_batch:
        raise ProtocolError(f"input {expected.name!r}: batch of {shape[0]}, the maximum per request is {max_batch}")
    return tuple(shape)


def _tensor_data(
    entry: dict[str, Any], name: str, shape: tuple[int, ...], binary: memoryview, offset: int
) -> tuple[np.ndarray, int]:
    """The input's values (from the binary part at `offset`, or from JSON `data`) and the next binary offset."""
    count = math.prod(shape)
    parameters = entry.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if size != count * FP32.itemsize:
            raise ProtocolError(
                f"input {name!r}: binary_data_size {size} is not {count} FP32 values ({count * 4} bytes)"
            )
        if offset + size > len(binary):
            raise ProtocolError(f"input {name!r}: the body ends before its {size} bytes of binary data")
        values = np.frombuffer(binary[offset : offset + size], dtype=FP32).astype(np.float32)
        return values.reshape(shape), offset + size
    if "data" not in entry:
        raise ProtocolError(f"input {name!r} has neither data nor parameters.binary_data_size")
    try:
        values = np.asarray(entry["data"], dtype=np.float64)
    except (TypeError, ValueError):
        raise ProtocolError(f"input {name!r}: data must be numbers (a flat or nested list)") from None
    if values.size != count:
        raise ProtocolError(f"input {name!r}: {values.size} values for shape {list(shape)} ({count} values)")
    if np.any(np.abs(values[np.isfinite(values)]) > np.finfo(np.float32).max):
        raise ProtocolError(f"input {name!r} has values beyond FP32's range")
    return values.astype(np.float32).reshape(shape), offset


def read_inputs(request: dict[str, Any], binary: bytes, network: Network, max_batch: int) -> dict[str, np.ndarray]:
    expected = {t.name: t for t in network.inputs}
    inputs: dict[str, np.ndarray] = {}
    offset, view = 0, memoryview(binary)
    for entry in request["inputs"]:
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in expected:
            raise ProtocolError(f"unknown input {name!r}; this model takes {sorted(expected)}")
        if name in inputs:
            raise ProtocolError(f"input {name!r} is given more than once")
        if entry.get("datatype") != DATATYPE:
            raise ProtocolError(f"input {name!r} has datatype {entry.get('datatype')!r}, expected {DATATYPE!r}")
        shape = _shape(entry, expected[name], max_batch)
        inputs[name], offset = _tensor_data(entry, name, shape, view, offset)
        if not np.all(np.isfinite(inputs[name])):
            raise ProtocolError(f"input {name!r} has NaN or infinite values")
    missing = sorted(set(expected) - set(inputs))
    if missing:
        raise ProtocolError(f"missing input(s) {missing}")
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data after the inputs that declare theirs")
    batches = {array.shape[0] for array in inputs.values()}
    if len(batches) > 1:
        raise ProtocolError(f"inputs have different batch sizes {sorted(batches)}")
    return inputs


def requested_outputs(request: dict[str, Any], network: Network) -> list[tuple[str, bool]]:
    """(name, as binary) of each output to return: those asked for, else all; binary as each output's
    `binary_data` parameter says, else as the request's `binary_data_output` (Triton's extension; default JSON)."""
    parameters = request.get("parameters") or {}
    default_binary = bool(parameters.get("binary_data_output", False)) if isinstance(parameters, dict) else False
    known = [t.name for t in network.outputs]
    asked = request.get("outputs")
    if asked is None:
        return [(name, default_binary) for name in known]
    if not isinstance(asked, list) or not asked:
        raise ProtocolError('"outputs" must be a non-empty list of {"name": ...} objects')
    chosen = []
    for entry in asked:
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in known:
            raise ProtocolError(f"unknown output {name!r}; this model gives {known}")
        options = entry.get("parameters") or {}
        if "classification" in options:
            raise ProtocolError("the classification extension is not supported: these models output tensors")
        chosen.append((name, bool(options.get("binary_data", default_binary))))
    return chosen


def render(
    model_name: str, request: dict[str, Any], results: dict[str, np.ndarray], outputs: list[tuple[str, bool]]
) -> Response:
    entries, blobs = [], []
    for name, binary in outputs:
        array = results[name].astype(FP32, copy=False)
        entry: dict[str, Any] = {"name": name, "datatype": DATATYPE, "shape": list(array.shape)}
        if binary:
            blob = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    body: dict[str, Any] = {"model_name": model_name, "model_version": VERSION, "outputs": entries}
    if isinstance(request.get("id"), str):
        body["id"] = request["id"]
    header = json.dumps(body).encode()
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(header + b"".join(blobs), media_type=BINARY, headers={HEADER_LENGTH: str(len(header))})


# ---- routes ---------------------------------------------------------------------------------------------------


@router.get("")
async def server_metadata() -> ServerMetadata:
    """The server's name, version and the protocol extensions it supports."""
    return ServerMetadata(name="facevae", version=__version__, extensions=["binary_tensor_data"])


@router.get("/models/{name}", responses=_errors(404, 503))
@router.get("/models/{name}/versions/{version}", responses=_errors(404, 503))
async def model_metadata(model: LoadedModel, name: str, version: str | None = None) -> ModelMetadata:
    """A model's platform, versions, and its inputs and outputs (name, datatype, shape; -1 is the batch)."""
    return ModelMetadata.model_validate(_network(model, name, version).metadata(name))


_READY = {200: {"model": ModelReady}, 503: {"model": ModelReady, "description": "Not ready."}, **_errors(404)}


@router.get("/models/{name}/ready", responses=_READY)
@router.get("/models/{name}/versions/{version}/ready", responses=_READY)
async def model_ready(state: StateDep, name: str, version: str | None = None) -> Response:
    """200 with ready true once the bundle is loaded and ready (as /health/ready), else 503 with ready false."""
    if state.model is not None:
        _network(state.model, name, version)
    ready = state.model is not None and not state.problem
    return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)


async def _body(request: Request) -> tuple[bytes, str | None]:
    return await request.body(), request.headers.get(HEADER_LENGTH)


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its `$defs` put in place of their `$ref`s: inside an OpenAPI document a
    "#/$defs/..." reference would point at the document's root, where there are none."""
    definitions = schema.pop("$defs", {})

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref", "")
            if reference.startswith("#/$defs/"):
                return visit(definitions[reference.removeprefix("#/$defs/")])
            return {key: visit(value) for key, value in node.items()}
        if isinstance(node, list):
            return [visit(item) for item in node]
        return node

    return visit(schema)


_INFER: dict[str, Any] = {
    "responses": {
        200: {
            "model": InferResponseSchema,
            "description": "The outputs as JSON, or (binary outputs) a JSON header of Inference-Header-Content-Length "
            "bytes followed by the tensors.",
            "content": {BINARY: {"schema": {"type": "string", "format": "binary"}}},
        },
        **_errors(400, 404, 408, 413, 503, 504),
    },
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inlined(InferRequestSchema.model_json_schema())},
                BINARY: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
}


@router.post("/models/{name}/infer", **_INFER)
@router.post("/models/{name}/versions/{version}/infer", **_INFER)
def infer(
    model: ReadyModel,
    body: Annotated[tuple[bytes, str | None], Depends(_body)],
    name: str,
    version: str | None = None,
) -> Response:
    """Run the encoder or the decoder on a batch (JSON `data` or binary tensors); plain `def`: in the thread pool."""
    network = _network(model, name, version)
    request, binary = _split_body(*body)
    inputs = read_inputs(request, binary, network, model.max_batch)
    outputs = requested_outputs(request, network)
    return render(name, request, run_network(model, name, inputs), outputs)


# ---- errors in the protocol's shape ---------------------------------------------------------------------------


async def _protocol_error(request: Request, exc: ProtocolError) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


class ProtocolErrorMiddleware:
    """Gives the protocol's routes `{"error": ...}` for the errors every route shares (413 and 408 of the body
    limits, 503 and 504 of admission, 405, 422, ...), which the rest of the app answers as `{"detail": ...}`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v2/"):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def rewriting_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message  # held until the whole body is known
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = _as_protocol_error(b"".join(chunks))
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewriting_send)


def _as_protocol_error(body: bytes) -> bytes:
    """`{"detail": ...}` as `{"error": "..."}` (pydantic's 422 list as one line, "loc: msg; ..."); other bodies as
    they are."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if not isinstance(parsed, dict) or parsed.keys() != {"detail"}:
        return body  # not the generic error (e.g. /v2/health/ready's {"ready": false, "detail": ...}): as it is
    detail = parsed["detail"]
    if isinstance(detail, list):
        detail = "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', ()))}: {item.get('msg')}"
            if isinstance(item, dict)
            else str(item)
            for item in detail
        )
    return json.dumps({"error": str(detail)}).encode()


def add_open_inference_protocol(app: Any) -> None:
    """The /v2 routes, their error handler and the middleware that shapes the shared errors (outside the limits)."""
    app.include_router(router)
    app.add_exception_handler(ProtocolError, _protocol_error)
    app.add_middleware(ProtocolErrorMiddleware)
