"""FastAPI dependencies: the loaded model, and request bodies that come as JSON, multipart or raw image bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Header, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from service.api.rendering import JSON
from service.api.schemas import (
    DecodeRequest,
    EditRequest,
    EditUpload,
    EncodeUpload,
    InterpolateRequest,
    InterpolateUpload,
)
from service.core.framing import FaceFramer
from service.core.imaging import PhotoDecoder
from service.core.runtime import FaceModel

MULTIPART = "multipart/form-data"
NOT_LOADED = "model not loaded yet"

M = TypeVar("M", bound=BaseModel)
N = TypeVar("N", bound=BaseModel)


@dataclass
class ModelState:
    """What the lifespan has loaded; `problem` says why the service is not ready (None when it is)."""

    model: FaceModel | None = None
    framer: FaceFramer | None = None
    problem: str | None = NOT_LOADED


async def model_state(request: Request) -> ModelState:
    return request.app.state.model_state


# The face endpoints' dependencies read the app's state themselves rather than through `model_state`: FastAPI
# solves every sub-dependency of every request anew, even a cached one, so each level costs CPU on each request
# (docs/benchmarks.md, "HTTP's cost per request").


async def loaded_model(request: Request) -> FaceModel:
    """The model even when not ready (e.g. require_gpu unmet), for endpoints that only describe it."""
    state: ModelState = request.app.state.model_state
    if state.model is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, state.problem or NOT_LOADED)
    return state.model


def _ready(request: Request) -> ModelState:
    """The app's state, once its model is loaded, warmed up and on the required providers (else 503)."""
    state: ModelState = request.app.state.model_state
    if state.model is None or state.problem:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, state.problem or NOT_LOADED)
    return state


async def ready_model(request: Request) -> FaceModel:
    """The model, only once loaded, warmed up and on the required providers."""
    model = _ready(request).model
    assert model is not None
    return model


async def ready_framer(request: Request) -> FaceFramer:
    """The photo framer the lifespan made for the model, answering 503 as `ready_model` does."""
    framer = _ready(request).framer
    assert framer is not None
    return framer


StateDep = Annotated[ModelState, Depends(model_state)]
LoadedModel = Annotated[FaceModel, Depends(loaded_model)]
ReadyModel = Annotated[FaceModel, Depends(ready_model)]
ReadyFramer = Annotated[FaceFramer, Depends(ready_framer)]
AcceptHeader = Annotated[
    str | None, Header(description="image/png (default), image/jpeg, image/webp or application/json.")
]


async def no_query_parameters(request: Request) -> None:
    """Endpoints without options refuse any, as the others refuse unknown ones: 422, one error per name."""
    if request.query_params:
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name),
                    "msg": "Extra inputs are not permitted",
                    "input": value,
                }
                for name, value in request.query_params.multi_items()
            ]
        )


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def _unsupported(content_type: str, expected: str) -> HTTPException:
    return HTTPException(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"unsupported Content-Type {content_type or '(none)'}; send {expected}"
    )


def _validate(model: type[M], data: object) -> M:
    """Validate like FastAPI does for declared bodies, so errors come out as the usual 422 with loc ["body", ...]."""
    try:
        return model.model_validate_json(data) if isinstance(data, bytes) else model.model_validate(data)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc


async def _read_form(request: Request, model: type[M]) -> M:
    """Validate a multipart form with files read into bytes; unknown fields are rejected by the model."""
    files = sum(field.annotation is bytes for field in model.model_fields.values())
    async with request.form(max_files=files, max_fields=len(model.model_fields)) as form:
        fields: dict[str, object] = {}
        for key, value in form.multi_items():
            if key in fields:  # last-wins would silently drop one of them
                error = {"type": "value_error", "loc": ("body", key), "msg": f"the field {key[:100]!r} is given twice"}
                raise RequestValidationError([error])
            fields[key] = await value.read() if isinstance(value, UploadFile) else value
    return _validate(model, fields)


async def image_upload(request: Request) -> bytes:
    """The photo for /encode: a raw body with an image/* Content-Type, or the multipart field `image`."""
    content_type = _content_type(request)
    if content_type.startswith("image/"):
        return await request.body()
    if content_type == MULTIPART:
        return (await _read_form(request, EncodeUpload)).image
    raise _unsupported(content_type, "an image/* body or multipart/form-data with the field 'image'")


async def _latents_or_photos(request: Request, latents: type[M], photos: type[N], photo_fields: str) -> M | N:
    """A body that is JSON (`latents`) or multipart with photos (`photos`); anything else is a 415."""
    content_type = _content_type(request)
    if content_type == JSON:
        return _validate(latents, await request.body())
    if content_type == MULTIPART:
        return await _read_form(request, photos)
    raise _unsupported(content_type, f"{JSON} or {MULTIPART} with {photo_fields}")


async def edit_source(request: Request) -> EditRequest | EditUpload:
    """The /edit body: JSON with a latent, or multipart with a photo and the attributes as a JSON field."""
    return await _latents_or_photos(request, EditRequest, EditUpload, "the fields 'image' and 'attributes'")


async def decode_body(request: Request) -> DecodeRequest:
    """The /decode body: JSON only, parsed and refused exactly as /edit's JSON body is (415, then 422)."""
    content_type = _content_type(request)
    if content_type != JSON:
        raise _unsupported(content_type, JSON)
    return _validate(DecodeRequest, await request.body())


async def photo_decoder(request: Request) -> PhotoDecoder:
    """The app's decoder of uploads, with the memory budget of its settings."""
    return request.app.state.photo_decoder


async def interpolate_source(request: Request) -> InterpolateRequest | InterpolateUpload:
    """The /interpolate body: JSON with two latents, or multipart with two photos."""
    return await _latents_or_photos(request, InterpolateRequest, InterpolateUpload, "the files 'start' and 'end'")


ImageUpload = Annotated[bytes, Depends(image_upload)]
InterpolateSource = Annotated[InterpolateRequest | InterpolateUpload, Depends(interpolate_source)]
PhotoDecoderDep = Annotated[PhotoDecoder, Depends(photo_decoder)]
DecodeBody = Annotated[DecodeRequest, Depends(decode_body)]
EditSource = Annotated[EditRequest | EditUpload, Depends(edit_source)]
