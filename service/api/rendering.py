"""Content negotiation and the image-or-JSON responses shared by /decode, /sample and /edit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import HTTPException, status
from fastapi.responses import JSONResponse, Response

from service.api.schemas import ErrorMessage, FacesResponse
from service.core.imaging import ImageFormat, encode_image, picture, to_base64

JSON = "application/json"
IMAGE_MEDIA_TYPES = tuple(image_format.media_type for image_format in ImageFormat)

#: OpenAPI description of a faces response (one picture in any image format, or JSON).
FACES_CONTENT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One picture (a face, a grid or a strip) or, with Accept: application/json, every face "
        "as base64 with its latent.",
        "model": FacesResponse,
        "content": {media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in IMAGE_MEDIA_TYPES},
    }
}

_ERROR_DESCRIPTIONS = {
    400: "Not an image, or a corrupt or truncated one.",
    406: "None of the media types in Accept can be produced.",
    413: "Request body over the size limit, or image dimensions over the decoding limit.",
    415: "Unsupported request Content-Type.",
    501: "align=auto on a server installed without the face detector (see GET /metadata's face_detection).",
    503: "Model not loaded, or loaded but not ready (see /health/ready).",
}


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the given error statuses, all with the `{"detail": "..."}` body."""
    return {code: {"model": ErrorMessage, "description": _ERROR_DESCRIPTIONS[code]} for code in status_codes}


def _accepted_ranges(accept: str | None) -> dict[str, float]:
    """Media ranges of an Accept header with their q-values; a missing header accepts anything."""
    ranges: dict[str, float] = {}
    for item in (accept or "*/*").split(","):
        media_range, *parameters = (part.strip() for part in item.split(";"))
        quality = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media_range:
            ranges[media_range.lower()] = quality
    return ranges


def negotiate(accept: str | None, offered: Sequence[str]) -> str:
    """The offered media type with the highest q-value in Accept (the most specific range decides; ties go to
    the first offered), or 406 naming what this endpoint can produce."""
    ranges = _accepted_ranges(accept)
    best, best_quality = None, 0.0
    for media_type in offered:
        kind = media_type.partition("/")[0]
        quality = next((ranges[r] for r in (media_type, f"{kind}/*", "*/*") if r in ranges), 0.0)
        if quality > best_quality:
            best, best_quality = media_type, quality
    if best is None:
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            f"cannot respond with any of Accept: {accept}; this request can produce {', '.join(offered)}",
        )
    return best


def choose_media_type(accept: str | None, image_format: ImageFormat | None, *, one_picture: bool) -> str:
    """Media type of a faces response. Several separate faces can only be JSON; `format=` fixes the image type."""
    if not one_picture:
        return negotiate(accept, [JSON])
    images = [image_format.media_type] if image_format else list(IMAGE_MEDIA_TYPES)
    return negotiate(accept, [*images, JSON])


def render_faces(
    media_type: str,
    faces: np.ndarray,
    z: np.ndarray,
    *,
    seed: int | None,
    image_format: ImageFormat | None,
    columns: int | None = None,
) -> Response:
    """Encode uint8 [N, H, W, 3] faces as one picture (one face, or a grid with `columns`) or as JSON."""
    headers = {"Vary": "Accept"}
    if seed is not None:
        headers["X-Seed"] = str(seed)
    if media_type == JSON:
        encoding = image_format or ImageFormat.PNG
        body = FacesResponse(
            images=[to_base64(encode_image(face, encoding)) for face in faces],
            media_type=encoding.media_type,
            z=z.tolist(),
            seed=seed,
        )
        return JSONResponse(body.model_dump(), headers=headers)
    content = encode_image(picture(faces, columns), ImageFormat.from_media_type(media_type))
    return Response(content=content, media_type=media_type, headers=headers)
