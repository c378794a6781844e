"""Uvicorn's httptools protocol with limits on request headers: size, count and time.

Uvicorn buffers a request's headers without limit when nothing is in front of it (httptools has no setting for it,
and h11's `h11_max_incomplete_event_size` applies to h11 only): eight connections sending 250 MB of header lines
each took a worker to 2.26 GB. The Kubernetes manifests put no proxy in front, so the service enforces the limits
itself, as nginx does in the compose topology:

- the request line and headers together may be at most `max_header_bytes` (431 beyond);
- at most `max_headers` header lines (431 beyond);
- the headers must be complete within `header_timeout` seconds of the connection or of the request's first byte
  (408, and the connection is closed): a client that opens connections and sends nothing, or a byte at a time, does
  not hold them for ever.

The limits come from the `FACEVAE_*` settings in the worker's environment (`service.api.cli` exports them).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api.settings import Settings

logger = logging.getLogger("service.access")


def _limits() -> tuple[int, int, float]:
    settings = Settings()
    return settings.max_header_bytes, settings.max_headers, settings.header_timeout


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` that answers 431 to oversized or too many headers and 408 to headers that take too long."""

    limits: tuple[int, int, float] | None = None  # read once per process, from the environment

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if GuardedHttpToolsProtocol.limits is None:
            GuardedHttpToolsProtocol.limits = _limits()
        self.max_header_bytes, self.max_headers, self.header_timeout = GuardedHttpToolsProtocol.limits
        self._in_headers = True
        self._header_bytes = 0
        self._header_count = 0
        self._refused: str | None = None
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._in_headers and not self.transport.is_closing():
            self._refuse(408, f"request headers not complete within {self.header_timeout:g} s")

    def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` with a JSON detail and close the connection (the request never reaches the app)."""
        body = json.dumps({"detail": detail}).encode()
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        self.transport.write(head % (status, reason, len(body)) + body)
        self.transport.close()
        self._in_headers = False
        logger.info("- - %d (%s)", status, detail)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        was_in_headers = self._in_headers
        super().data_received(data)
        if self._refused is not None:
            if not self.transport.is_closing():
                self._refuse(431, self._refused)
            return
        if was_in_headers and self._in_headers:  # the whole chunk was headers (a new request's: at most one chunk less)
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
                self._refuse(431, f"request headers are larger than the limit of {self.max_header_bytes} bytes")

    def send_400_response(self, msg: str) -> None:
        if self._refused is not None:  # our own callback's refusal, reported by httptools as a parser error
            self._refuse(431, self._refused)
            return
        super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        self._header_count = 0
        self._arm_header_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_headers:
            self._refused = f"more than {self.max_headers} header lines"
            raise ValueError(self._refused)  # stops the parser; httptools reports it as a parser error
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm_header_timer()
        super().on_headers_complete()
