"""`Client` (sync) and `AsyncClient` on httpx: one method per API operation (defined once in `operations`).

Busy answers (503 or 429 with Retry-After, the service's admission limit or a proxy's rate limit) are retried after
the time the server asks for, as long as the total wait stays within `retry_budget` seconds; any other error status
raises the typed `APIError` of `facevae_client.errors` with the API's `detail`.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import httpx

from facevae_client import operations
from facevae_client.errors import ConnectionFailed, error_for
from facevae_client.operations import Call

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"
URL_VARIABLE = "FACEVAE_URL"
#: Seconds to connect, and to wait for each read or write: a 12-megapixel photo edit takes about a second.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
#: Seconds a call may spend waiting on Retry-After in total before the busy answer is raised.
DEFAULT_RETRY_BUDGET = 10.0
RETRY_STATUSES = (429, 503)


def default_url() -> str:
    return os.environ.get(URL_VARIABLE) or DEFAULT_URL


def retry_after(response: httpx.Response) -> float | None:
    """Seconds a busy answer asks to wait (Retry-After as seconds or an HTTP date), or None if it is not one."""
    if response.status_code not in RETRY_STATUSES:
        return None
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # no usable Retry-After: not a busy answer to wait out (e.g. "model not loaded yet")
    return max(0.0, when.timestamp() - time.time())


class _Retrying:
    """The retry budget of one call."""

    def __init__(self, budget: float) -> None:
        self.left = budget

    def delay(self, response: httpx.Response) -> float | None:
        """How long to sleep before retrying `response`, or None to give up on it."""
        wait = retry_after(response)
        if wait is None or wait > self.left:
            return None
        self.left -= wait
        return wait


def _result(call: Call[T], response: httpx.Response) -> T:
    if response.is_error:
        raise error_for(response)
    return call.parse(response)


def _sync(operation: Callable[P, Call[T]]) -> Callable[Concatenate[Client, P], T]:
    @functools.wraps(operation)
    def method(self: Client, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.run(operation(*args, **kwargs))

    return method


def _async(operation: Callable[P, Call[T]]) -> Callable[Concatenate[AsyncClient, P], Awaitable[T]]:
    @functools.wraps(operation)
    async def method(self: AsyncClient, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.run(operation(*args, **kwargs))

    return method


def _options(url: str | None, timeout: float | httpx.Timeout | None, **httpx_options: Any) -> dict[str, Any]:
    return {
        "base_url": url or default_url(),
        "timeout": DEFAULT_TIMEOUT if timeout is None else timeout,
        **httpx_options,
    }


class Client:
    """The service's API for synchronous code; `url` defaults to $FACEVAE_URL, else http://127.0.0.1:8000.

    Use it as a context manager (or call `close()`) to release its connections. Extra keyword arguments go to
    `httpx.Client` (e.g. `transport`, `headers`).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
        **httpx_options: Any,
    ) -> None:
        self.http = httpx.Client(**_options(url, timeout, **httpx_options))
        self.retry_budget = retry_budget

    def run(self, call: Call[T]) -> T:
        """Send one operation's request, waiting out busy answers within the retry budget."""
        retrying = _Retrying(self.retry_budget)
        while True:
            try:
                response = self.http.send(call.request(self.http))
            except httpx.TransportError as exc:
                raise ConnectionFailed(f"{call.method} {self.http.base_url}{call.path}: {exc!r}") from exc
            wait = retrying.delay(response)
            if wait is None:
                return _result(call, response)
            time.sleep(wait)

    detect = _sync(operations.detect)
    encode = _sync(operations.encode)
    decode = _sync(operations.decode)
    sample = _sync(operations.sample)
    edit = _sync(operations.edit)
    interpolate = _sync(operations.interpolate)
    attributes = _sync(operations.attributes)
    metadata = _sync(operations.metadata)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClient:
    """The same API for asyncio code: every method is a coroutine; use `async with` or `await aclose()`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
        **httpx_options: Any,
    ) -> None:
        self.http = httpx.AsyncClient(**_options(url, timeout, **httpx_options))
        self.retry_budget = retry_budget

    async def run(self, call: Call[T]) -> T:
        """Send one operation's request, waiting out busy answers within the retry budget."""
        retrying = _Retrying(self.retry_budget)
        while True:
            try:
                response = await self.http.send(call.request(self.http))
            except httpx.TransportError as exc:
                raise ConnectionFailed(f"{call.method} {self.http.base_url}{call.path}: {exc!r}") from exc
            wait = retrying.delay(response)
            if wait is None:
                return _result(call, response)
            await asyncio.sleep(wait)

    detect = _async(operations.detect)
    encode = _async(operations.encode)
    decode = _async(operations.decode)
    sample = _async(operations.sample)
    edit = _async(operations.edit)
    interpolate = _async(operations.interpolate)
    attributes = _async(operations.attributes)
    metadata = _async(operations.metadata)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
