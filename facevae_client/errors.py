"""Typed exceptions for the service's answers: every 4xx and 5xx becomes an `APIError` subclass carrying `detail`."""

from __future__ import annotations

from typing import Any

import httpx


class FaceVAEError(Exception):
    """Base of every error this client raises."""


class ConnectionFailed(FaceVAEError):
    """The server could not be reached or did not answer in time (httpx's transport error is the cause)."""


class APIError(FaceVAEError):
    """The server answered with an error status; `detail` is the API's own (a string, or for 422 pydantic's list)."""

    def __init__(self, status_code: int, detail: Any, response: httpx.Response | None = None) -> None:
        self.status_code = status_code
        self.detail = detail
        self.response = response
        super().__init__(f"{status_code}: {describe(detail)}")


class BadRequest(APIError):
    """400: not an image, or a corrupt one."""


class NotFound(APIError):
    """404: no such path (or model, for the Open Inference Protocol's routes)."""


class MethodNotAllowed(APIError):
    """405: the path exists but takes another method."""


class NotAcceptable(APIError):
    """406: the requested media type cannot be produced."""


class RequestTimeout(APIError):
    """408: the request body stalled."""


class PayloadTooLarge(APIError):
    """413: the body or the image is over the server's limits."""


class UnsupportedMediaType(APIError):
    """415: the body's Content-Type is not one the operation takes."""


class InvalidInput(APIError):
    """422: a parameter or body field is invalid, a photo has no face, or an attribute is unknown."""


class TooManyRequests(APIError):
    """429: rate limited (by a proxy in front of the service), still so after the retry budget."""


class NotImplementedOnServer(APIError):
    """501: the server cannot do this (face detection not installed: send align="none")."""


class ServiceUnavailable(APIError):
    """503: busy (still so after the retry budget) or not ready."""


class GatewayTimeout(APIError):
    """504: the request ran longer than the server's request timeout."""


class ServerError(APIError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    406: NotAcceptable,
    408: RequestTimeout,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidInput,
    429: TooManyRequests,
    501: NotImplementedOnServer,
    503: ServiceUnavailable,
    504: GatewayTimeout,
}


def describe(detail: Any) -> str:
    """A one-line message from a `detail`: pydantic's 422 list becomes "loc: msg; loc: msg"."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query"))
                parts.append(f"{where}: {item.get('msg', item)}" if where else str(item.get("msg", item)))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def error_for(response: httpx.Response) -> APIError:
    """The typed error for an error response, with the API's `detail` (or the protocol's `error`, or the text)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
    elif isinstance(body, dict) and "error" in body:
        detail = body["error"]
    else:
        detail = response.text or response.reason_phrase
    status = response.status_code
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    return kind(status, detail, response)
