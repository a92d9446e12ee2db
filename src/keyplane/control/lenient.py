"""Body reading for the Management API: authenticated first, bounded, and liberal in input.

The user's own document sends ``curl -d '{...}'`` — which says form-urlencoded — and one of its
bodies has a trailing comma. Both must work as written, so a JSON body is accepted under those
content types and trailing commas are forgiven; other content types get a 415.

Order matters (issue #14): the caller is authenticated before a byte of the body is read, the
body is capped while it is read, and forgiving trailing commas is one linear pass — a body crafted
to make a backtracking pattern quadratic costs no more than any other body of its size.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from keyplane.domain.errors import InvalidArgument, PayloadTooLarge, UnsupportedMediaType

_JSONISH = ("application/json", "application/x-www-form-urlencoded", "text/plain", "")
# A string literal, kept as is, or a comma that only closes a container, dropped. Possessive and
# never failing on a string (an unterminated one runs to the end), so the scan is one linear pass
# whatever the body: no backtracking, no restart at every quote.
_TRAILING_COMMA = re.compile(r'("(?:[^"\\]++|\\.)*+(?:"|\\?\Z))|,([ \t\n\r]*+[}\]])', re.DOTALL)


def drop_trailing_commas(text: str) -> str:
    """``text`` less every comma followed only by whitespace before ``}`` or ``]``, outside
    strings."""
    return _TRAILING_COMMA.sub(r"\1\2", text)


def lenient_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("body is not UTF-8") from None
    try:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
        return json.loads(drop_trailing_commas(text))
    except json.JSONDecodeError as error:
        raise InvalidArgument(f"body is not valid JSON ({error.msg} at {error.pos})") from None
    except (ValueError, RecursionError):
        # A number longer than int() converts (4300 digits), or nesting deeper than the parser goes.
        raise InvalidArgument(
            "body is not valid JSON (a number too long or nesting too deep)"
        ) from None


async def read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


#: The attribute of a route's endpoint that names its fast path (``keyplane.control.routing.
#: fast_path``): called with the request once it is authenticated and its body read, it answers
#: as the endpoint would, or returns None to leave the request to FastAPI's handler.
FAST_PATH = "keyplane_fast_path"
FastPath = Callable[[Request], Awaitable[Response | None]]


def make_route_class(
    limit: Callable[[Request], int], authenticate: Callable[[Request], Awaitable[None]]
) -> type[APIRoute]:
    """Routes that ``authenticate`` the caller before reading a body, then read it capped at
    ``limit(request)`` bytes and hand the handler plain JSON."""

    class LenientJsonRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            endpoint = self.endpoint

            async def lenient(request: Request) -> Response:
                if request.method in ("POST", "PUT", "PATCH"):
                    await authenticate(request)
                    request = await _normalized(request, limit(request))
                # Read per request, so that a test can compare the answers with and without it.
                fast: FastPath | None = getattr(endpoint, FAST_PATH, None)
                if fast is not None:
                    answer = await fast(request)
                    if answer is not None:
                        return answer
                return await handler(request)

            return lenient

    return LenientJsonRoute


async def _normalized(request: Request, limit: int) -> Request:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in _JSONISH and not media.endswith("+json"):
        raise UnsupportedMediaType(f"content type {media!r} is not supported; send JSON")
    raw = await read_capped(request, limit)
    parsed: Any = None
    body = b""
    if raw.strip():
        parsed = lenient_json(raw)
        body = raw
    headers = [
        (k, v) for k, v in request.scope["headers"] if k not in (b"content-type", b"content-length")
    ]
    if body:
        headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(body)).encode()))
    scope = {**request.scope, "headers": headers}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    normalized = Request(scope, receive)
    if body:
        # Parsed once: FastAPI takes the body and its JSON from here (Starlette's Request keeps
        # both once read) instead of reading and parsing it again.
        normalized._body = body
        normalized._json = parsed
    return normalized
