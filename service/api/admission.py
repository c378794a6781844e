"""Bounded work: at most `max_in_flight` requests per worker run at once, a short wait for a slot, then 503.

Without a bound an overloaded server queues without end (p99 of seconds at a few hundred connections) and even
its health checks wait behind the model, so an orchestrator restarts a replica for being busy. Requests beyond the
limit wait up to `queue_timeout` for a slot, then get 503 with Retry-After, which a client or load balancer can act
on; health, metrics, metadata, the docs and the page's files bypass the limit. A request still running after
`request_timeout` gets 504 (the thread already computing finishes its call; nothing new starts for that request).

While a request waits for a slot, its messages are read and kept (to be replayed to the app once admitted), so a
client that leaves is heard: its request is dropped before any model runs and logged as 499, nginx's "client
closed request". Only the first `LISTEN_BYTES` of a body are read this way, which bounds the memory a queue of
large uploads holds; a client that leaves after sending more is heard once its request is admitted and reads on.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.asgi import TrackedSend, send_json
from service.api.errors import CLIENT_CLOSED_REQUEST

#: Body bytes read from a request while it waits for a slot (to hear its client leave); the rest waits unread.
LISTEN_BYTES = 256 * 1024
#: Paths that never wait: an orchestrator's probes and a scraper must get through a busy server.
BYPASS_PREFIXES = ("/health/", "/v2/health/", "/metrics", "/metadata", "/attributes", "/docs", "/openapi.json", "/web/")


class _Listener:
    """Reads a waiting request's messages until its client leaves (or LISTEN_BYTES are read), and replays them."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.messages: list[Message] = []
        self.gone = asyncio.Event()

    async def listen(self) -> None:
        read = 0
        while read <= LISTEN_BYTES:
            message = await self.receive()
            self.messages.append(message)
            if message["type"] == "http.disconnect":
                self.gone.set()
                return
            read += len(message.get("body", b""))

    async def replay(self) -> Message:
        """The app's `receive`: the messages read while waiting first, then the connection's own."""
        return self.messages.pop(0) if self.messages else await self.receive()


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
        if not self.slots.locked():  # a free slot: taken at once (acquire does not yield then), nothing to hear
            await self.slots.acquire()
            outcome = "admitted"
        else:
            listener = _Listener(receive)
            outcome = await self._wait_for_slot(listener)
            receive = listener.replay
        if outcome == "gone":
            self.on_reject("gone")
            await send_json(send, CLIENT_CLOSED_REQUEST, "the client left while its request waited for a slot", {})
            return
        if outcome == "busy":
            self.on_reject("busy")
            retry = str(max(1, math.ceil(self.queue_timeout)))
            detail = f"busy: {self.max_in_flight} requests in flight on this worker; retry after {retry} s"
            await send_json(send, 503, detail, {"Retry-After": retry})
            return
        tracked = TrackedSend(send)
        try:
            async with asyncio.timeout(self.request_timeout):  # in this task: no task per request, as wait_for makes
                await self.app(scope, receive, tracked)
        except TimeoutError:
            self.on_reject("deadline")
            if not tracked.started:
                await send_json(send, 504, f"the request took longer than {self.request_timeout:g} s", {})
        finally:
            self.slots.release()

    async def _wait_for_slot(self, listener: _Listener) -> str:
        """ "admitted" (holding a slot), "gone" (the client left while waiting) or "busy" (no slot in time)."""
        listening = asyncio.ensure_future(listener.listen())
        acquiring = asyncio.ensure_future(self.slots.acquire())
        leaving = asyncio.ensure_future(listener.gone.wait())
        try:
            await asyncio.wait({acquiring, leaving}, timeout=self.queue_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            acquired = acquiring.done() and not acquiring.cancelled()
            for task in (acquiring, leaving, listening):
                task.cancel()
            # The app must not call receive() while the listener still may: wait until it has stopped.
            await asyncio.gather(listening, leaving, acquiring, return_exceptions=True)
        if acquired and not listener.gone.is_set():
            return "admitted"
        if acquired:
            self.slots.release()
        return "gone" if listener.gone.is_set() else "busy"
