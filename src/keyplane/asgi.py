"""The ASGI vocabulary every keyplane server shares: the types of a plain ASGI app, and the few
ways of answering that the planes write by hand (a JSON document, keyplane's error shape).

The gateway and the model server are plain ASGI apps; the control plane's access log is plain
ASGI middleware; ``keyplane.httpbounds`` answers in keyplane's error shape before any app runs.
What a status code means, and which error gets which, is each plane's own (its error map): not
here.

May import: the standard library and msgspec only, so that every room may import it (the model
server, which stands alone, included).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final, Protocol

import msgspec

__all__ = [
    "DISCONNECT_WATCH",
    "JSON_HEADERS",
    "DisconnectWatch",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "error_body",
    "header",
    "send_json",
    "send_json_bytes",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS: Final = [(b"content-type", b"application/json")]

#: Scope key of a ``DisconnectWatch``, where the server offers one (``keyplane.httpbounds`` does).
DISCONNECT_WATCH: Final = "keyplane.disconnect_watch"


class DisconnectWatch(Protocol):
    """A server's word that it calls back when the client's connection is lost: what an app
    would otherwise learn by keeping a task waiting in ``receive()`` for ``http.disconnect``."""

    def add(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` (once, from the event loop) if the connection is lost."""
        ...

    def discard(self, callback: Callable[[], object]) -> None:
        """No longer: the request is over."""
        ...


_encode = msgspec.json.Encoder().encode


def error_body(code: str, message: str) -> bytes:
    """keyplane's error shape, ``{"code": ..., "error": ...}``, as JSON bytes."""
    return _encode({"code": code, "error": message})


async def send_json_bytes(
    send: Send, status: int, payload: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Answer with ``payload``, a JSON document already encoded, and its length."""
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


async def send_json(
    send: Send, status: int, body: Any, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Answer with ``body`` encoded as JSON."""
    await send_json_bytes(send, status, _encode(body), headers)


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of the request header ``name`` (lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None
