"""Small ASGI pieces the middlewares share: a JSON answer sent below FastAPI, and a `send` that remembers whether
the response has started (after which it can no longer be replaced by an error)."""

from __future__ import annotations

import json

from starlette.types import Message, Send


async def send_json(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """`{"detail": detail}` with `status` and `headers`, as the app's own errors look."""
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(key.lower().encode(), value.encode()) for key, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class TrackedSend:
    """`send`, noting whether the response has started."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)
