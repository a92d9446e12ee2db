"""The few ASGI helpers the gateway's lean path needs: read a bounded body, send JSON or an error.

The one place the inference plane turns a ``KeyplaneError`` into an HTTP answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import msgspec

from keyplane.domain.errors import (
    KeyplaneError,
    PayloadTooLarge,
    RateLimited,
    Unauthenticated,
    http_status,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_encoder = msgspec.json.Encoder()
JSON_HEADERS = [(b"content-type", b"application/json")]


async def send_json(
    send: Send, status: int, body: Any, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    payload = _encoder.encode(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *JSON_HEADERS,
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def send_error(send: Send, error: KeyplaneError) -> None:
    headers: list[tuple[bytes, bytes]] = []
    if isinstance(error, RateLimited):
        headers = [(k.encode(), v.encode()) for k, v in error.headers.items()]
        headers.append((b"retry-after", str(max(1, round(error.retry_after + 0.4999))).encode()))
    elif isinstance(error, Unauthenticated):
        headers.append((b"www-authenticate", b"Bearer"))
    await send_json(send, http_status(error), {"code": error.code, "error": error.message}, headers)


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None
