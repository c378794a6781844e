"""Map the domain errors of `imaging` and `runtime` to 4xx responses with FastAPI's `{"detail": ...}` body."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.core.detection import DetectorUnavailable
from service.core.imaging import ImageTooLarge, InvalidImage
from service.core.runtime import InputError

logger = logging.getLogger(__name__)
#: nginx's status for a request whose client went away before it was answered.
CLIENT_CLOSED_REQUEST = 499
#: Longest text an error echoes from the request (names, values, messages quoting them).
ECHO_CHARS = 1000


async def _invalid_image(request: Request, exc: InvalidImage) -> Response:
    return JSONResponse({"detail": _json_safe(str(exc))}, status_code=status.HTTP_400_BAD_REQUEST)


async def _image_too_large(request: Request, exc: ImageTooLarge) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_413_CONTENT_TOO_LARGE)


async def _detector_unavailable(request: Request, exc: DetectorUnavailable) -> Response:
    """A deployment without the detector (see service/detection.py) cannot honour align=auto: say so, and how."""
    detail = f"align=auto is not available on this server ({exc}); send an aligned crop with align=none"
    return JSONResponse({"detail": detail}, status_code=status.HTTP_501_NOT_IMPLEMENTED)


async def _client_disconnect(request: Request, exc: ClientDisconnect) -> Response:
    """The client left mid-upload: nobody reads an answer, so no traceback and no 500; logged and counted as
    nginx's 499 (client closed request)."""
    logger.info("%s %s: client disconnected before its request was read", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def _json_safe(value: Any) -> Any:
    """Make an echoed `input` renderable and short: JSON has no NaN or Infinity, an uploaded photo is not text,
    and an exception in `ctx` is better shown as its message."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and len(value) > ECHO_CHARS:  # a 9 MB attribute name is not echoed back whole
        return f"{value[:ECHO_CHARS]}... ({len(value)} characters)"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, Exception):
        return str(value)
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    return value


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422 body, with every echoed value made JSON-safe by `_json_safe`."""
    detail = jsonable_encoder(_json_safe(exc.errors()))
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _input_error(request: Request, exc: InputError) -> Response:
    """A 422 shaped like pydantic's, so clients read every validation failure the same way."""
    error = {"type": "value_error", "loc": (exc.field,), "msg": str(exc)}
    return await _validation_error(request, RequestValidationError([error]))


#: What each operation that takes a body wants, for the 405 a GET on it gets (a browser's first try).
_WHAT_TO_SEND = {
    "/detect": 'a photo: an image/* body, or multipart/form-data with the file "image"',
    "/encode": 'a photo: an image/* body, or multipart/form-data with the file "image"',
    "/decode": 'a JSON body {"z": [...]} with one latent (or a list of latents) from /encode or /sample',
    "/edit": 'a JSON body {"z": [...], "attributes": {"Smiling": 2}}, or multipart/form-data with the file "image" '
    "and the field attributes='{\"Smiling\": 2}' (optionally keep='[\"Male\"]'); GET /attributes lists the names",
    "/interpolate": 'a JSON body {"start": [...], "end": [...]}, '
    'or multipart/form-data with the files "start" and "end"',
}


async def _method_not_allowed(request: Request, exc: StarletteHTTPException) -> Response:
    """Starlette's bare "Method Not Allowed", made to say which method to use and what to send (see /docs)."""
    allowed = (exc.headers or {}).get("Allow", "")
    path = request.url.path
    detail = f"{request.method} {path} is not allowed; use {allowed or 'another method'}"
    if path in _WHAT_TO_SEND:
        detail += f" with {_WHAT_TO_SEND[path]}"
    detail += " (the operations and their bodies are at /docs)"
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


def add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(status.HTTP_405_METHOD_NOT_ALLOWED, _method_not_allowed)
    app.add_exception_handler(InvalidImage, _invalid_image)
    app.add_exception_handler(ImageTooLarge, _image_too_large)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(DetectorUnavailable, _detector_unavailable)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
