"""The admission limit on its own: a slow inner app, concurrent requests, the 503s, the bypass and the deadline."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.admission import AdmissionMiddleware


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
