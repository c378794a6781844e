"""ASGI middleware: the request body read within limits before admission, the shutdown's 503, security headers,
and the per-request access log.

Both are pure ASGI (not BaseHTTPMiddleware), so they neither buffer bodies nor disturb streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.asgi import TrackedSend, send_json
from service.api.errors import CLIENT_CLOSED_REQUEST

logger = logging.getLogger("service.access")


#: Bodies declared up to this many times the limit are read and thrown away before the 413 is sent (nginx's
#: lingering close): a client that writes its whole body before reading, like Python's urllib, would otherwise see a
#: connection reset instead of the answer. Larger ones are answered at once, so nobody can make the server read more.
LINGER_FACTOR = 4
#: Seconds from the headers before the minimum upload rate applies (a connection's first bytes may take a moment).
UPLOAD_GRACE_S = 2.0
#: Longest a refused body is read and thrown away so its client can read the refusal.
LINGER_S = 5.0


async def _discard_body(receive: Receive, max_bytes: float = math.inf, seconds: float = LINGER_S) -> None:
    """Read and drop the rest of a body (at most `max_bytes`, for at most `seconds`), so that its client, which may
    write everything before reading, reads the answer instead of a connection reset."""
    read = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while read <= max_bytes:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                read += len(message.get("body", b""))


class _Refused(Exception):
    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status_code, self.detail, self.headers = status_code, detail, headers or {}


class UploadMiddleware:
    """Read a request's whole body before it competes for a model slot, within limits on size, time and memory.

    - size: over `max_bytes` is 413, at once when Content-Length says so, else as soon as the body passes it;
    - time: a body that stalls for `stall_timeout` between two chunks, arrives at less than `min_rate` bytes a second
      on average (counted from `UPLOAD_GRACE_S` after the headers), or takes longer than `deadline` in all is 408;
      so a client sending a byte a second holds no slot and is gone within seconds;
    - memory: the bodies read and not yet answered hold at most `buffer_bytes` in all; beyond, 503 with Retry-After.
    A refused body is read and thrown away first (up to `LINGER_FACTOR` times the limit, `LINGER_S`), so clients
    that write everything before reading, like urllib, read the refusal instead of a connection reset. The app then
    gets the body as one message; the connection's later messages (its disconnect) pass through."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        stall_timeout: float,
        min_rate: float,
        deadline: float,
        buffer_bytes: int,
        retry_after: int = 1,
        bypass: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.stall_timeout = stall_timeout
        self.min_rate = min_rate
        self.deadline = deadline
        self.buffer_bytes = buffer_bytes
        self.retry_after = retry_after
        self.bypass = bypass
        self.buffered = 0  # bytes of bodies read and not yet answered (one event loop: no lock needed)

    def _too_large(self) -> _Refused:
        return _Refused(413, f"request body is larger than the limit of {self.max_bytes} bytes")

    def _full(self) -> _Refused:
        detail = f"busy: uploads in progress hold this worker's {self.buffer_bytes} byte buffer; retry after "
        return _Refused(503, f"{detail}{self.retry_after} s", {"Retry-After": str(self.retry_after)})

    def _reserve(self, count: int) -> None:
        if self.buffered + count > self.buffer_bytes:
            raise self._full()
        self.buffered += count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.bypass):
            await self.app(scope, receive, send)
            return
        reserved = 0
        complete = False  # the whole body has been received
        try:
            declared = Headers(scope=scope).get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_bytes:
                if int(declared) <= LINGER_FACTOR * self.max_bytes:  # larger ones are answered at once
                    await _discard_body(receive)
                raise self._too_large()
            if declared.isdigit():
                self._reserve(int(declared))
                reserved = int(declared)
            chunks: list[bytes] = []
            received = 0
            loop = asyncio.get_running_loop()
            started = loop.time()
            while True:
                now = loop.time()
                rate_due = started + UPLOAD_GRACE_S + received / self.min_rate
                due = min(now + self.stall_timeout, started + self.deadline, rate_due)
                try:
                    async with asyncio.timeout_at(due):
                        message = await receive()
                except TimeoutError:
                    raise self._slow(due, now, rate_due, started) from None
                if message["type"] == "http.disconnect":
                    self.buffered -= reserved
                    logger.info(
                        "%s %s: client disconnected before its request was read", scope["method"], scope["path"]
                    )
                    await send_json(send, CLIENT_CLOSED_REQUEST, "the client left while sending its request")
                    return
                body = message.get("body", b"")
                received += len(body)
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    if not complete:
                        await _discard_body(receive, (LINGER_FACTOR - 1) * self.max_bytes)
                    raise self._too_large()
                if received > reserved:
                    self._reserve(received - reserved)
                    reserved = received
                chunks.append(body)
                if complete:
                    break
        except _Refused as refused:
            self.buffered -= reserved
            if refused.status_code == 503 and not complete:
                await _discard_body(receive, LINGER_FACTOR * self.max_bytes)
            await send_json(send, refused.status_code, refused.detail, refused.headers)
            return
        except BaseException:  # cancelled (shutdown), or the client left
            self.buffered -= reserved
            raise
        whole: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
        chunks.clear()

        async def replay() -> Message:
            return whole.pop() if whole else await receive()

        try:
            await self.app(scope, replay, send)
        finally:
            self.buffered -= reserved

    def _slow(self, due: float, now: float, rate_due: float, started: float) -> _Refused:
        if due == rate_due:
            return _Refused(408, f"the request body arrived slower than {self.min_rate:g} bytes/s")
        if due == started + self.deadline:
            return _Refused(408, f"the request body took longer than {self.deadline:g} s")
        return _Refused(408, f"the request body stalled for more than {self.stall_timeout:g} s")


class ShutdownMiddleware:
    """A request still running when the graceful shutdown timeout runs out is cancelled by uvicorn, which answered
    it with a plain-text 500 and logged a traceback: it gets 503 JSON with Retry-After instead (another replica, or
    this one restarted, can serve it). A response already started cannot be changed and is cut short."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = TrackedSend(send)
        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if tracked.started:
                raise
            logger.warning("%s %s: cancelled by the shutdown, answered 503", scope["method"], scope["path"])
            detail = "the server is shutting down; retry (another replica may answer)"
            await send_json(send, 503, detail, {"Retry-After": "1", "Connection": "close"})


class SecurityHeadersMiddleware:
    """`X-Content-Type-Options: nosniff` on every answer, and the page's Content-Security-Policy on every page file
    (`/` and `/web/...`), not only on `/`."""

    def __init__(self, app: ASGIApp, page_paths: tuple[str, ...], policy: str) -> None:
        self.app = app
        self.page_paths = page_paths
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        page = scope["path"] == "/" or scope["path"].startswith(self.page_paths)

        async def secured_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                if page:
                    headers["Content-Security-Policy"] = self.policy
            await send(message)

        await self.app(scope, receive, secured_send)


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
