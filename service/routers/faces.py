"""The face endpoints: find faces in a photo, encode one, decode latents, sample random faces, edit attributes.

Path operations are plain `def`, so FastAPI runs them (and `session.run`) in its thread pool, off the event loop;
only the async dependencies that read request bodies run on the loop.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel

from service.compositing import Output, compose
from service.dependencies import (
    MULTIPART,
    AcceptHeader,
    DecodeBody,
    Decoder,
    EditSource,
    ImageUpload,
    InterpolateSource,
    ReadyFramer,
    ReadyModel,
)
from service.framing import FRAMING_SIDE, FaceFramer, Framed
from service.imaging import PhotoDecoder, photo_scale
from service.rendering import FACES_CONTENT, JSON, choose_media_type, error_responses, negotiate, render_faces
from service.runtime import draw_seed
from service.schemas import (
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

router = APIRouter(tags=["faces"], responses=error_responses(406, 503))

_RAW_IMAGE = {"schema": {"type": "string", "format": "binary"}}


def _request_body(content: dict[str, type[BaseModel] | None]) -> dict[str, Any]:
    """OpenAPI requestBody for operations that parse their body themselves (several content types)."""
    schemas = {
        media_type: {"schema": model.model_json_schema()} if model else _RAW_IMAGE
        for media_type, model in content.items()
    }
    return {"requestBody": {"required": True, "content": schemas}}


def _framed(
    decoder: PhotoDecoder, framer: FaceFramer, data: bytes, params: FramingParams, whole: bool = False
) -> tuple[Image.Image, Framed]:
    """An uploaded photo (decoded whole, or only as large as framing needs) and its face framed as `params` say."""
    photo = decoder.decode(data, None if whole else FRAMING_SIDE)
    return photo, framer.frame(photo, params.align, params.face)


@router.post(
    "/detect",
    responses=error_responses(400, 413, 415, 501),
    openapi_extra=_request_body({MULTIPART: EncodeUpload, "image/*": None}),
)
def detect(framer: ReadyFramer, decoder: Decoder, data: ImageUpload, accept: AcceptHeader = None) -> DetectResponse:
    """Every face in a photo, largest first, with its box, five landmarks and score (none found: an empty list)."""
    negotiate(accept, [JSON])
    photo = decoder.decode(data, FRAMING_SIDE)
    scale = photo_scale(photo)
    return DetectResponse(
        width=round(photo.width * scale),
        height=round(photo.height * scale),
        faces=[FaceInfo.of(face, scale) for face in framer.detect(photo)],
    )


@router.post(
    "/encode",
    responses=error_responses(400, 413, 415, 501),
    openapi_extra=_request_body({MULTIPART: EncodeUpload, "image/*": None}),
)
def encode(
    model: ReadyModel,
    framer: ReadyFramer,
    decoder: Decoder,
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
    photo, framed = _framed(decoder, framer, data, params)
    encoding = model.encode_pixels(framed.pixels[np.newaxis])
    seed = draw_seed() if params.seed is None else params.seed
    z = encoding.sample(np.random.default_rng(seed))
    return EncodeResponse(
        code=encoding.code[0].tolist(),
        z_mean=encoding.z_mean[0].tolist(),
        z_log_var=encoding.z_log_var[0].tolist(),
        z=z[0].tolist(),
        seed=seed,
        face=None if framed.face is None else FaceInfo.of(framed.face, photo_scale(photo)),
    )


@router.post(
    "/decode",
    response_class=Response,
    responses={**FACES_CONTENT, **error_responses(413, 415)},
    openapi_extra=_request_body({JSON: DecodeRequest}),
)
def decode(
    model: ReadyModel, body: DecodeBody, params: Annotated[DecodeParams, Query()], accept: AcceptHeader = None
) -> Response:
    """Latents to faces: one latent gives an image; several give a JSON list, or one grid image with grid=true."""
    media_type = choose_media_type(accept, params.format, one_picture=not body.several or params.grid)
    z = model.latents(body.latents)
    return render_faces(media_type, model.decode(z), z, seed=None, image_format=params.format)


@router.get("/sample", response_class=Response, responses=FACES_CONTENT)
def sample(model: ReadyModel, params: Annotated[SampleParams, Query()], accept: AcceptHeader = None) -> Response:
    """Random faces; the same seed gives the same bytes. n > 1 gives a grid unless grid=false."""
    media_type = choose_media_type(accept, params.format, one_picture=params.n == 1 or params.grid)
    seed = draw_seed() if params.seed is None else params.seed
    z = model.sample_latents(params.n, np.random.default_rng(seed), params.mode, params.temperature)
    return render_faces(media_type, model.decode(z), z, seed=seed, image_format=params.format)


@router.post(
    "/interpolate",
    response_class=Response,
    responses={**FACES_CONTENT, **error_responses(400, 413, 415, 501)},
    openapi_extra=_request_body({JSON: InterpolateRequest, MULTIPART: InterpolateUpload}),
)
def interpolate(
    model: ReadyModel,
    framer: ReadyFramer,
    decoder: Decoder,
    source: InterpolateSource,
    params: Annotated[InterpolateParams, Query()],
    accept: AcceptHeader = None,
) -> Response:
    """A walk between two faces (latents, or photos framed as /encode frames them): a strip, or JSON with every
    latent. `method=slerp` (default) keeps every step as far from the codes' mean as its ends."""
    media_type = choose_media_type(accept, params.format, one_picture=True)
    if isinstance(source, InterpolateUpload):
        pixels = np.stack([_framed(decoder, framer, data, params)[1].pixels for data in (source.start, source.end)])
        start, end = model.encode_pixels(pixels).code
    else:
        start, end = (model.latents([z], name)[0] for name, z in (("start", source.start), ("end", source.end)))
    path = model.interpolate(start, end, params.steps, params.method)
    faces = model.decode(path)
    return render_faces(media_type, faces, path, seed=None, image_format=params.format, columns=len(faces))


@router.post(
    "/edit",
    response_class=Response,
    responses={**FACES_CONTENT, **error_responses(400, 413, 415, 501)},
    openapi_extra=_request_body({JSON: EditRequest, MULTIPART: EditUpload}),
)
def edit(
    model: ReadyModel,
    framer: ReadyFramer,
    decoder: Decoder,
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
    if isinstance(source, EditUpload):
        photo, framed = _framed(decoder, framer, source.image, params, whole=params.output is Output.PHOTO)
        z = model.encode_pixels(framed.pixels[np.newaxis]).code[0]
        edited = model.edit(z, source.attributes, params.steps, source.keep)
        before = model.decode(z[np.newaxis])[0]
        faces = compose(photo, framed.alignment, before, model.decode(edited), params.output, params.detail)
    else:
        edited = model.edit(model.latents([source.z])[0], source.attributes, params.steps, source.keep)
        faces = model.decode(edited)
    return render_faces(media_type, faces, edited, seed=None, image_format=params.format, columns=len(faces))
