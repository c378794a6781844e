"""The face endpoints: find faces in a photo, encode one, decode latents, sample random faces, edit attributes.

Each path operation parses its request, calls the core's function for the operation (`service.core.operations`) and
renders the answer; the work itself is not written here. Work on photos or on several faces runs in FastAPI's
thread pool (plain `def` path operations, or `_answer`), off the event loop; a single face from a latent is decoded
and encoded on the loop, which spares it the hand-off to a thread and back (`INLINE_FACES`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from service.api.dependencies import (
    MULTIPART,
    AcceptHeader,
    DecodeBody,
    EditSource,
    ImageUpload,
    InterpolateSource,
    PhotoDecoderDep,
    ReadyFramer,
    ReadyModel,
)
from service.api.rendering import FACES_CONTENT, JSON, choose_media_type, error_responses, negotiate, render_faces
from service.api.schemas import (
    DecodeParams,
    DecodeRequest,
    DetectResponse,
    EditParams,
    EditRequest,
    EditUpload,
    EncodeParams,
    EncodeResponse,
    EncodeUpload,
    FaceInfo,
    FramingParams,
    InterpolateParams,
    InterpolateRequest,
    InterpolateUpload,
    SampleParams,
)
from service.core import operations
from service.core.compositing import Output
from service.core.framing import FaceFramer
from service.core.imaging import ImageFormat, PhotoDecoder
from service.core.operations import Faces, Framing
from service.core.runtime import FaceModel

router = APIRouter(tags=["faces"], responses=error_responses(406, 503))

_RAW_IMAGE = {"schema": {"type": "string", "format": "binary"}}
#: Answers of at most this many faces from latents are computed on the event loop. One face (a decoder run and a PNG,
#: a millisecond or a few) blocks the loop about as long as its request's own HTTP handling does, and the hand-off to
#: a thread and back was the largest and most variable part of such a request's overhead; longer work goes to the
#: thread pool, so the loop stays free for the other requests, probes and timers (docs/benchmarks.md, "HTTP's cost
#: per request").
INLINE_FACES = 1


def _request_body(content: dict[str, type[BaseModel] | None]) -> dict[str, Any]:
    """OpenAPI requestBody for operations that parse their body themselves (several content types)."""
    schemas = {
        media_type: {"schema": model.model_json_schema()} if model else _RAW_IMAGE
        for media_type, model in content.items()
    }
    return {"requestBody": {"required": True, "content": schemas}}


def _framing(params: FramingParams) -> Framing:
    return Framing(params.align, params.face)


def _render(media_type: str, result: Faces, image_format: ImageFormat | None) -> Response:
    return render_faces(
        media_type, result.faces, result.latents, seed=result.seed, image_format=image_format, columns=result.columns
    )


async def _answer(faces: int, media_type: str, image_format: ImageFormat | None, work: Callable[[], Faces]) -> Response:
    """`work`'s faces rendered, on the event loop for up to `INLINE_FACES` faces, else in the thread pool."""

    def answer() -> Response:
        return _render(media_type, work(), image_format)

    return answer() if faces <= INLINE_FACES else await run_in_threadpool(answer)


@router.post(
    "/detect",
    responses=error_responses(400, 413, 415, 501),
    openapi_extra=_request_body({MULTIPART: EncodeUpload, "image/*": None}),
)
def detect(
    framer: ReadyFramer, photo_decoder: PhotoDecoderDep, data: ImageUpload, accept: AcceptHeader = None
) -> DetectResponse:
    """Every face in a photo, largest first, with its box, five landmarks and score (none found: an empty list)."""
    negotiate(accept, [JSON])
    found = operations.detect(photo_decoder, framer, data)
    return DetectResponse(
        width=found.width, height=found.height, faces=[FaceInfo.of(face, found.scale) for face in found.faces]
    )


@router.post(
    "/encode",
    responses=error_responses(400, 413, 415, 501),
    openapi_extra=_request_body({MULTIPART: EncodeUpload, "image/*": None}),
)
def encode(
    model: ReadyModel,
    framer: ReadyFramer,
    photo_decoder: PhotoDecoderDep,
    data: ImageUpload,
    params: Annotated[EncodeParams, Query()],
    accept: AcceptHeader = None,
) -> EncodeResponse:
    """A face photo to its posterior (z_mean, z_log_var and one sample z, deterministic with `seed`) and to `code`,
    the latent /decode and /edit reproduce the face from best (z_mean refined; `FaceModel.refine`).

    With align=auto (the default) the face is found and aligned like the training crops, and `face` says which
    one was used; align=none crops the bundle's box, as training framed the CelebA crops.
    """
    negotiate(accept, [JSON])
    result = operations.encode_photo(model, framer, photo_decoder, data, _framing(params), params.seed)
    encoding = result.encoding
    return EncodeResponse(
        code=encoding.code[0].tolist(),
        z_mean=encoding.z_mean[0].tolist(),
        z_log_var=encoding.z_log_var[0].tolist(),
        z=result.z[0].tolist(),
        seed=result.seed,
        face=None if result.face is None else FaceInfo.of(result.face, result.scale),
    )


@router.post(
    "/decode",
    response_class=Response,
    responses={**FACES_CONTENT, **error_responses(413, 415)},
    openapi_extra=_request_body({JSON: DecodeRequest}),
)
async def decode(
    model: ReadyModel, body: DecodeBody, params: Annotated[DecodeParams, Query()], accept: AcceptHeader = None
) -> Response:
    """Latents to faces: one latent gives an image; several give a JSON list, or one grid image with grid=true."""
    media_type = choose_media_type(accept, params.format, one_picture=not body.several or params.grid)
    work = partial(operations.decode, model, body.latents)
    return await _answer(len(body.latents), media_type, params.format, work)


@router.get("/sample", response_class=Response, responses=FACES_CONTENT)
async def sample(model: ReadyModel, params: Annotated[SampleParams, Query()], accept: AcceptHeader = None) -> Response:
    """Random faces; the same seed gives the same bytes. n > 1 gives a grid unless grid=false."""
    media_type = choose_media_type(accept, params.format, one_picture=params.n == 1 or params.grid)
    work = partial(operations.sample, model, params.n, params.seed, params.mode, params.temperature)
    return await _answer(params.n, media_type, params.format, work)


@router.post(
    "/interpolate",
    response_class=Response,
    responses={**FACES_CONTENT, **error_responses(400, 413, 415, 501)},
    openapi_extra=_request_body({JSON: InterpolateRequest, MULTIPART: InterpolateUpload}),
)
def interpolate(
    model: ReadyModel,
    framer: ReadyFramer,
    photo_decoder: PhotoDecoderDep,
    source: InterpolateSource,
    params: Annotated[InterpolateParams, Query()],
    accept: AcceptHeader = None,
) -> Response:
    """A walk between two faces (latents, or photos framed as /encode frames them): a strip, or JSON with every
    latent. `method=slerp` (default) keeps every step as far from the codes' mean as its ends."""
    media_type = choose_media_type(accept, params.format, one_picture=True)
    if isinstance(source, InterpolateUpload):
        result = operations.interpolate_photos(
            model, framer, photo_decoder, source.start, source.end, params.steps, params.method, _framing(params)
        )
    else:
        result = operations.interpolate_latents(model, source.start, source.end, params.steps, params.method)
    return _render(media_type, result, params.format)


@router.post(
    "/edit",
    response_class=Response,
    responses={**FACES_CONTENT, **error_responses(400, 413, 415, 501)},
    openapi_extra=_request_body({JSON: EditRequest, MULTIPART: EditUpload}),
)
async def edit(
    model: ReadyModel,
    framer: ReadyFramer,
    photo_decoder: PhotoDecoderDep,
    source: EditSource,
    params: Annotated[EditParams, Query()],
    accept: AcceptHeader = None,
) -> Response:
    """Move a face along attribute vectors: a photo (its code is edited, as /encode gives it) or a latent, plus
    strengths.

    With `steps` the result is a strip from -strength to +strength with the unedited face in the middle.
    `keep` names attributes whose directions are projected out of the edit, so they stay as they are.
    A photo is framed as /encode frames it (`align`, `face`), and `detail` and `output` say whether the answer is
    the model's face or the person's own (see the parameters); all four are ignored for a latent.
    """
    media_type = choose_media_type(accept, params.format, one_picture=True)
    if isinstance(source, EditRequest):
        work = partial(operations.edit_latent, model, source.z, source.attributes, params.steps, source.keep)
        return await _answer(params.steps or 1, media_type, params.format, work)
    return await run_in_threadpool(_edit_photo, model, framer, photo_decoder, source, params, media_type)


def _edit_photo(
    model: FaceModel,
    framer: FaceFramer,
    photo_decoder: PhotoDecoder,
    upload: EditUpload,
    params: EditParams,
    media_type: str,
) -> Response:
    # A whole photo (output=photo) keeps its decode slot until its answer is encoded: the memory budget covers
    # decoding, compositing and encoding (PhotoDecoder).
    with photo_decoder.hold() if params.output is Output.PHOTO else contextlib.nullcontext():
        result = operations.edit_photo(
            model,
            framer,
            photo_decoder,
            upload.image,
            upload.attributes,
            params.steps,
            upload.keep,
            _framing(params),
            params.output,
            params.detail,
        )
        return _render(media_type, result, params.format)
