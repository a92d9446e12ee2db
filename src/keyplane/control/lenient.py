"""Body reading for the Management API: authenticated first, bounded, and liberal in input.

The user's own document sends ``curl -d '{...}'`` — which says form-urlencoded — and one of its
bodies has a trailing comma. Both must work as written, so a JSON body is accepted under those
content types and trailing commas are forgiven; other content types get a 415.

Order matters (issue #14): the caller is authenticated before a byte of the body is read, the
body is capped while it is read, and forgiving trailing commas is one linear pass — a body crafted
to make a backtracking pattern quadratic costs no more than any other body of its size.

``FastPaths`` (plain ASGI, just inside the access log) sends a request that a route's fast path
takes (``FAST_PATH``) straight to it, with the same steps in the same order, past Starlette's
exception middleware and router and FastAPI's request handling.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette._utils import get_route_path

from keyplane.asgi import Receive, Scope, Send
from keyplane.domain.errors import (
    InvalidArgument,
    KeyplaneError,
    PayloadTooLarge,
    UnsupportedMediaType,
)

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
_BODY_METHODS = ("POST", "PUT", "PATCH")


async def _prepared(
    request: Request,
    limit: Callable[[Request], int],
    authenticate: Callable[[Request], Awaitable[None]],
) -> Request:
    """``request`` with its caller authenticated and its body read (a body method's)."""
    if request.method in _BODY_METHODS:
        await authenticate(request)
        request = await _normalized(request, limit(request))
    return request


def make_route_class(
    limit: Callable[[Request], int], authenticate: Callable[[Request], Awaitable[None]]
) -> type[APIRoute]:
    """Routes that ``authenticate`` the caller before reading a body, then read it capped at
    ``limit(request)`` bytes and hand the handler plain JSON."""

    class LenientJsonRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def lenient(request: Request) -> Response:
                return await handler(await _prepared(request, limit, authenticate))

            return lenient

    return LenientJsonRoute


class FastPaths:
    """Plain ASGI: a request for one of ``routes`` whose endpoint has a fast path (read per
    request, so that a test can compare the answers with and without it) is prepared as the
    route class prepares it (``authenticate``, the body capped at ``limit``) and answered by
    the fast path, or by ``failed(error)`` when a step raises a ``KeyplaneError`` (the error
    map's answer); everything else, and a request the fast path leaves (it returns None), goes
    on to ``app``. Skipping Starlette's exception middleware, its router and FastAPI's request
    handling saves ~a sixth of a create's CPU on the event loop."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        routes: Iterable[Any],
        limit: Callable[[Request], int],
        authenticate: Callable[[Request], Awaitable[None]],
        failed: Callable[[KeyplaneError], Response],
    ) -> None:
        self.app = app
        self._routes = [
            (frozenset(route.methods or ()), route)
            for route in routes
            if isinstance(route, APIRoute) and getattr(route.endpoint, FAST_PATH, None)
        ]
        self._limit = limit
        self._authenticate = authenticate
        self._failed = failed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for methods, route in self._routes:
                if scope["method"] not in methods:
                    continue
                match = route.path_regex.match(get_route_path(scope))
                if match is None:
                    continue
                fast: FastPath | None = getattr(route.endpoint, FAST_PATH, None)
                if fast is None:
                    break
                params = {
                    name: route.param_convertors[name].convert(value)
                    for name, value in match.groupdict().items()
                }
                await self._answer(fast, {**scope, "path_params": params}, receive, send)
                return
        await self.app(scope, receive, send)

    async def _answer(self, fast: FastPath, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            request = await _prepared(request, self._limit, self._authenticate)
            answer = await fast(request)
        except KeyplaneError as error:
            answer = self._failed(error)
        if answer is None:
            # The route then prepares the request again (its body is the one read here).
            await self.app(request.scope, request.receive, send)
            return
        await answer(request.scope, request.receive, send)


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
    # Parsed once: FastAPI takes the body and its JSON from here (Starlette's Request keeps both
    # once read) instead of reading and parsing it again; ``receive`` stays unread for a request
    # that a fast path hands on to the route (``FastPaths``).
    normalized._body = body
    if body:
        normalized._json = parsed
    return normalized
