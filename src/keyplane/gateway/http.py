"""The gateway's HTTP edge: its error map, the one place the inference plane turns an error into
an HTTP answer, and the bounded read of a request body.

The map is the gateway's own (the control plane keeps its own in ``keyplane.control.errors``):
each error class of ``keyplane.domain.errors``, and the gateway's two upstream failures below,
has its status here, found along the class's MRO; anything else is a 500. The body is keyplane's
error shape (``keyplane.asgi.error_body``); nothing else in the gateway writes one.
"""

from __future__ import annotations

from keyplane.asgi import Receive, Send, error_body, send_json_bytes
from keyplane.domain import errors
from keyplane.domain.errors import KeyplaneError, PayloadTooLarge, RateLimited, Unauthenticated

__all__ = [
    "STATUS",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "read_body",
    "send_error",
    "status_of",
]


class UpstreamUnreachable(errors.Unavailable):
    """The model server could not be reached, or failed before answering."""


class UpstreamTimeout(errors.Unavailable):
    """The model server stayed silent past the gateway's bound."""


#: Error class → HTTP status. A subclass not listed takes its nearest listed base's.
STATUS: dict[type[KeyplaneError], int] = {
    errors.InvalidArgument: 400,
    errors.PayloadTooLarge: 413,
    errors.MethodNotAllowed: 405,
    errors.UnsupportedMediaType: 415,
    errors.Unauthenticated: 401,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.RateLimited: 429,
    errors.Unavailable: 503,
    UpstreamUnreachable: 502,
    UpstreamTimeout: 504,
}
_UNMAPPED = 500


def status_of(error: KeyplaneError) -> int:
    """The HTTP status the gateway answers ``error`` with."""
    for cls in type(error).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return _UNMAPPED


async def send_error(send: Send, error: KeyplaneError) -> None:
    headers: list[tuple[bytes, bytes]] = []
    if isinstance(error, RateLimited):
        headers = [(k.encode(), v.encode()) for k, v in error.headers.items()]
        headers.append((b"retry-after", str(max(1, round(error.retry_after + 0.4999))).encode()))
    elif isinstance(error, Unauthenticated):
        headers.append((b"www-authenticate", b"Bearer"))
    await send_json_bytes(send, status_of(error), error_body(error.code, error.message), headers)


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
