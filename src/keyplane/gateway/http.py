"""The gateway's own ASGI helpers: read a bounded body, send an error.

The one place the inference plane turns a ``KeyplaneError`` into an HTTP answer. The ASGI types
and ``send_json`` are every server's: :mod:`keyplane.asgi`.
"""

from __future__ import annotations

from keyplane.asgi import Receive, Send, error_body, send_json_bytes
from keyplane.domain.errors import (
    KeyplaneError,
    PayloadTooLarge,
    RateLimited,
    Unauthenticated,
    http_status,
)


async def send_error(send: Send, error: KeyplaneError) -> None:
    headers: list[tuple[bytes, bytes]] = []
    if isinstance(error, RateLimited):
        headers = [(k.encode(), v.encode()) for k, v in error.headers.items()]
        headers.append((b"retry-after", str(max(1, round(error.retry_after + 0.4999))).encode()))
    elif isinstance(error, Unauthenticated):
        headers.append((b"www-authenticate", b"Bearer"))
    await send_json_bytes(send, http_status(error), error_body(error.code, error.message), headers)


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
