"""ASGI middleware: the request body's size limit and read timeout, and the per-request access log.

Both are pure ASGI (not BaseHTTPMiddleware), so they neither buffer bodies nor disturb streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import HTTPException, status
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("service.access")


#: Bodies declared up to this many times the limit are read and thrown away before the 413 is sent (nginx's
#: lingering close): a client that writes its whole body before reading, like Python's urllib, would otherwise see a
#: connection reset instead of the answer. Larger ones are answered at once, so nobody can make the server read more.
LINGER_FACTOR = 4


async def _discard_body(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class BodySizeLimitMiddleware:
    """Refuse bodies over `max_bytes` with 413: at once when Content-Length says so, and otherwise while the body
    is read (chunked uploads have no Content-Length, and a client may lie in it)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> HTTPException:
        return HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"request body is larger than the limit of {self.max_bytes} bytes"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            if int(declared) <= LINGER_FACTOR * self.max_bytes:
                with contextlib.suppress(HTTPException):  # a body that stalls while thrown away: the 413 says enough
                    await _discard_body(receive)
            error = self._too_large()
            await JSONResponse({"detail": error.detail}, status_code=error.status_code)(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()  # FastAPI's and Starlette's body readers let HTTPException through
            return message

        await self.app(scope, receive_within_limit, send)


class BodyTimeoutMiddleware:
    """Refuse a request whose body stalls for more than `seconds` between two chunks with 408.

    Uvicorn waits for a body without end, so a stalled upload held a worker's slot and stretched every shutdown to
    the full graceful timeout. Headers that never finish are the proxy's job (deploy/nginx.conf's
    client_header_timeout): an ASGI app only sees a request once its headers are in."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False

        async def receive_in_time() -> Message:
            nonlocal body_done
            if body_done:  # after the body only the disconnect can come, whenever it does
                return await receive()
            try:
                async with asyncio.timeout(self.seconds):  # no task per message, as wait_for would make
                    message = await receive()
            except TimeoutError:
                raise HTTPException(
                    status.HTTP_408_REQUEST_TIMEOUT, f"the request body stalled for more than {self.seconds:g} s"
                ) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, receive_in_time, send)


class RequestObserver:
    """Base of the middleware that watch every HTTP request: `begin(scope)` when it arrives, `end(scope, status,
    seconds)` once it is answered (status 500 if the app raised before answering, which is what the client gets)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def begin(self, scope: Scope) -> None:
        """Called as a request arrives (nothing by default)."""

    def end(self, scope: Scope, status: int, seconds: float) -> None:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.begin(scope)
        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.end(scope, status, time.perf_counter() - started)


class RequestLogMiddleware(RequestObserver):
    """Log method, path, status and duration of every request."""

    def end(self, scope: Scope, status: int, seconds: float) -> None:
        logger.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, seconds * 1000)
