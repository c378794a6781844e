"""Bounded work: at most `max_in_flight` requests per worker run at once, a short wait for a slot, then 503.

Without a bound an overloaded server queues without end (p99 of seconds at a few hundred connections) and even
its health checks wait behind the model, so an orchestrator restarts a replica for being busy. Requests beyond the
limit wait up to `queue_timeout` for a slot, then get 503 with Retry-After, which a client or load balancer can act
on; health, metrics, metadata, the docs and the page's files bypass the limit. A request still running after
`request_timeout` gets 504 (the thread already computing finishes its call; nothing new starts for that request).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Paths that never wait: an orchestrator's probes and a scraper must get through a busy server.
BYPASS_PREFIXES = ("/health/", "/v2/health/", "/metrics", "/metadata", "/attributes", "/docs", "/openapi.json", "/web/")


async def _send_json(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(key.lower().encode(), value.encode()) for key, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class AdmissionMiddleware:
    """Admits at most `max_in_flight` requests at once; `on_reject(reason)` counts each 503 and 504."""

    def __init__(
        self,
        app: ASGIApp,
        max_in_flight: int,
        queue_timeout: float,
        request_timeout: float,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.queue_timeout = queue_timeout
        self.request_timeout = request_timeout
        self.on_reject = on_reject or (lambda reason: None)
        self.slots = asyncio.Semaphore(max_in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(BYPASS_PREFIXES):
            await self.app(scope, receive, send)
            return
        try:
            await asyncio.wait_for(self.slots.acquire(), self.queue_timeout)
        except TimeoutError:
            self.on_reject("busy")
            retry = str(max(1, math.ceil(self.queue_timeout)))
            detail = f"busy: {self.max_in_flight} requests in flight on this worker; retry after {retry} s"
            await _send_json(send, 503, detail, {"Retry-After": retry})
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracking_send), self.request_timeout)
        except TimeoutError:
            self.on_reject("deadline")
            if not started:
                await _send_json(send, 504, f"the request took longer than {self.request_timeout:g} s", {})
        finally:
            self.slots.release()
