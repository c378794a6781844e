"""The admission limit on its own: a slow inner app, concurrent requests, the 503s, the bypass and the deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.api.admission import LISTEN_BYTES, AdmissionMiddleware


async def _slow(request: Request) -> JSONResponse:
    await asyncio.sleep(float(request.query_params.get("seconds", "0.2")))
    return JSONResponse({"ok": True})


def _client(**limits: float) -> tuple[httpx.AsyncClient, list[str]]:
    rejected: list[str] = []
    inner = Starlette(routes=[Route("/work", _slow), Route("/health/live", _slow)])
    settings = {"max_in_flight": 2, "queue_timeout": 0.05, "request_timeout": 5.0, **limits}
    app = AdmissionMiddleware(inner, on_reject=rejected.append, **settings)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test"), rejected


@pytest.mark.anyio
async def test_beyond_the_limit_requests_get_503_with_retry_after() -> None:
    client, rejected = _client()
    async with client:
        responses = await asyncio.gather(*(client.get("/work") for _ in range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 503, 503, 503, 503]
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1"
    assert "busy: 2 requests in flight" in busy.json()["detail"]
    assert rejected == ["busy"] * 4


@pytest.mark.anyio
async def test_a_short_wait_for_a_slot_is_admitted() -> None:
    client, rejected = _client(queue_timeout=1.0)
    async with client:
        responses = await asyncio.gather(*(client.get("/work", params={"seconds": "0.1"}) for _ in range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    assert rejected == []


@pytest.mark.anyio
async def test_health_bypasses_the_limit() -> None:
    client, _ = _client(max_in_flight=1)
    async with client:
        busy = [client.get("/work", params={"seconds": "0.3"}) for _ in range(3)]
        health = [client.get("/health/live", params={"seconds": "0"}) for _ in range(5)]
        responses = await asyncio.gather(*busy, *health)
    assert [r.status_code for r in responses[3:]] == [200] * 5


@pytest.mark.anyio
async def test_past_the_deadline_a_request_gets_504_and_frees_its_slot() -> None:
    client, rejected = _client(max_in_flight=1, request_timeout=0.1)
    async with client:
        late = await client.get("/work", params={"seconds": "1"})
        quick = await client.get("/work", params={"seconds": "0"})
    assert late.status_code == 504
    assert "longer than 0.1 s" in late.json()["detail"]
    assert quick.status_code == 200
    assert rejected == ["deadline"]


async def _echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"length": len(body), "head": body[:8].decode(), "tail": body[-8:].decode()})


@pytest.mark.anyio
@pytest.mark.parametrize("size", [10, 3 * LISTEN_BYTES])  # within what a waiting request reads, and beyond it
async def test_a_queued_requests_body_reaches_the_app_whole(size: int) -> None:
    inner = Starlette(routes=[Route("/work", _slow), Route("/echo", _echo, methods=["POST"])])
    app = AdmissionMiddleware(inner, max_in_flight=1, queue_timeout=5.0, request_timeout=5.0)
    body = (b"0123456789" * (size // 10 + 1))[:size]

    async def chunks() -> AsyncIterator[bytes]:  # several http.request messages
        for start in range(0, size, 65536):
            yield body[start : start + 65536]

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        busy = client.get("/work", params={"seconds": "0.2"})  # holds the only slot, so the upload waits
        _, echoed = await asyncio.gather(busy, client.post("/echo", content=chunks()))
    assert echoed.status_code == 200
    assert echoed.json() == {"length": size, "head": body[:8].decode(), "tail": body[-8:].decode()}


@pytest.mark.anyio
async def test_a_request_whose_client_leaves_while_queued_never_runs() -> None:
    calls: list[str] = []

    async def counted(request: Request) -> JSONResponse:
        calls.append(request.url.path)
        return await _slow(request)

    rejected: list[str] = []
    inner = Starlette(routes=[Route("/work", counted)])
    app = AdmissionMiddleware(inner, max_in_flight=1, queue_timeout=5.0, request_timeout=5.0, on_reject=rejected.append)
    scope = {"type": "http", "method": "GET", "path": "/work", "query_string": b"seconds=0.5", "headers": []}
    messages = [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[dict] = []

    async def leaving_receive() -> dict:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(0.1)  # then the client closes the connection
        return {"type": "http.disconnect"}

    async def record(message: dict) -> None:
        sent.append(message)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        busy = client.get("/work", params={"seconds": "0.5"})  # holds the only slot for 0.5 s
        started = asyncio.get_running_loop().time()
        await asyncio.gather(busy, app(scope, leaving_receive, record))
    assert calls == ["/work"]  # only the request that held the slot ran
    assert rejected == ["gone"]
    assert sent[0]["status"] == 499
    assert asyncio.get_running_loop().time() - started < 1.0
