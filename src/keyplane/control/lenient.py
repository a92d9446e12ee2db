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

import inspect
import json
import re
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from copy import deepcopy
from types import UnionType
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

from fastapi import Request, Response, params
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import ResponseValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match

if TYPE_CHECKING:  # the type of a route's fields (``APIRoute.dependant``'s), for mypy only
    from fastapi._compat import ModelField

from keyplane.asgi import Receive, Scope, Send
from keyplane.domain.errors import (
    InvalidArgument,
    KeyplaneError,
    PayloadTooLarge,
    UnsupportedMediaType,
)

_JSON = "application/json"
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


#: The attribute of a route's endpoint that lets ``FastPaths`` answer it (``keyplane.control.
#: routing.Rpcs`` sets it on every RPC it declares; read per request, so that a test can compare
#: the answers with and without it).
FAST_PATH = "keyplane_fast_path"
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


class _Param:
    """A path, query or header parameter, read and validated as FastAPI's solver does it (its
    ``request_params_to_args``, for a parameter of one plain alias), with what that works out
    per request worked out once."""

    def __init__(self, field: ModelField) -> None:
        info = field.field_info
        assert isinstance(info, params.Param)
        self.field = field
        self.name = field.name
        self.alias = field.alias
        self.many = _is_sequence(info.annotation)  # every value of the name, as a list
        self.loc = (info.in_.value, field.alias)
        self.required = info.is_required()
        # A text as is: what pydantic's validation of a plain ``str`` (or ``str | None``) gives.
        self.text = not info.metadata and info.annotation in (str, str | None)

    @staticmethod
    def plain(field: ModelField) -> bool:
        info = field.field_info
        return (
            isinstance(info, params.Param)
            and info.validation_alias in (None, field.alias)
            and not info.metadata
            and not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel))
        )

    def read(self, received: Any, values: dict[str, Any]) -> tuple[Any, list[Any]]:
        value = received.getlist(self.alias) if self.many else received.get(self.alias)
        if value is None or (self.many and not value):
            if self.required:
                return None, [{"loc": self.loc}]
            value = deepcopy(self.field.default)
            if not self.field.field_info.validate_default:
                return value, []
        elif self.text and type(value) is str:
            return value, []
        validated: tuple[Any, list[Any]] = self.field.validate(value, values, loc=self.loc)
        return validated


def _is_sequence(annotation: Any) -> bool:
    if get_origin(annotation) in (Union, UnionType):
        return any(_is_sequence(arg) for arg in get_args(annotation))
    kind = get_origin(annotation) or annotation
    return (
        isinstance(kind, type)
        and issubclass(kind, (list, set, tuple, frozenset, deque))
        and not issubclass(kind, (str, bytes))
    )


class _Plan:
    """How to make the arguments of a route's endpoint (or of one of its dependencies) as
    FastAPI's solver makes them: the dependencies first, each once per request, in order; then
    the path, query and header parameters and the (one, JSON) body, validated by the route's own
    fields. ``of`` is None for what it does not cover (FastAPI's handler then answers)."""

    def __init__(self, dependant: Dependant, subs: list[tuple[_Plan, str | None]]) -> None:
        self.call = dependant.call
        self.subs = subs
        self.path = [_Param(f) for f in dependant.path_params]
        self.query = [_Param(f) for f in dependant.query_params]
        self.headers = [_Param(f) for f in dependant.header_params]
        self.request = dependant.request_param_name
        self.body = dependant.body_params[0] if dependant.body_params else None
        self.awaits = inspect.iscoroutinefunction(dependant.call)

    @classmethod
    def of(cls, dependant: Dependant, *, top: bool = True) -> _Plan | None:
        body = dependant.body_params
        if (
            dependant.cookie_params
            or dependant.response_param_name
            or dependant.background_tasks_param_name
            or dependant.security_scopes_param_name
            or dependant.websocket_param_name
            or dependant.http_connection_param_name
            or len(body) > (1 if top else 0)
            or any(type(f.field_info) is not params.Body or f.field_info.embed for f in body)
            or not all(
                _Param.plain(f)
                for f in (*dependant.path_params, *dependant.query_params, *dependant.header_params)
            )
        ):
            return None
        subs: list[tuple[_Plan, str | None]] = []
        for sub in dependant.dependencies:
            plan = cls.of(sub, top=False)
            if plan is None or not sub.use_cache or not inspect.iscoroutinefunction(sub.call):
                return None
            subs.append((plan, sub.name))
        return cls(dependant, subs)

    async def solve(
        self, request: Request, body: Any, cache: dict[Any, Any]
    ) -> dict[str, Any] | None:
        """The arguments, or None when one does not validate (FastAPI then answers, and says
        why)."""
        values: dict[str, Any] = {}
        for sub, name in self.subs:
            if sub.call in cache:
                solved = cache[sub.call]
            else:
                sub_values = await sub.solve(request, body, cache)
                if sub_values is None:
                    return None
                solved = cache[sub.call] = await sub.call(**sub_values)  # type: ignore[misc]
            if name is not None:
                values[name] = solved
        for fields, where in (
            (self.path, "path_params"),
            (self.query, "query_params"),
            (self.headers, "headers"),
        ):
            if not fields:
                continue
            received = getattr(request, where)
            for param in fields:
                value, errors = param.read(received, values)
                if errors:
                    return None
                values[param.name] = value
        if self.request is not None:
            values[self.request] = request
        if self.body is not None:
            if body is PydanticUndefined:
                if self.body.field_info.is_required():
                    return None
                value = deepcopy(self.body.default)
            else:
                value, errors = self.body.validate(body, values, loc=("body",))
                if errors:
                    return None
            values[self.body.name] = value
        return values


class FastPaths:
    """Plain ASGI: a request for one of ``routes`` whose endpoint is marked ``FAST_PATH`` is
    prepared as the route class prepares it (``authenticate``, the body capped at ``limit``),
    its arguments solved as FastAPI solves them (``_solve``, with the route's own fields), and
    its answer serialized by the route's own response field, as FastAPI serializes it; a step
    that raises a ``KeyplaneError`` is answered by ``failed(error)`` (the error map). Everything
    else, and a request whose parameters do not validate, goes on to ``app``, which answers it.
    Skipping Starlette's exception middleware and router and FastAPI's request handling and
    dependency solver saves about a third of a create's CPU on the event loop."""

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
            (route, plan)
            for route in routes
            if isinstance(route, APIRoute)
            and getattr(route.endpoint, FAST_PATH, False)
            and route.response_field is not None
            and (plan := _Plan.of(route.dependant)) is not None
        ]
        self._limit = limit
        self._authenticate = authenticate
        self._failed = failed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route, plan in self._routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    if getattr(route.endpoint, FAST_PATH, False):
                        await self._answer(route, plan, {**scope, **child}, receive, send)
                        return
                    break
        await self.app(scope, receive, send)

    async def _answer(
        self, route: APIRoute, plan: _Plan, scope: Scope, receive: Receive, send: Send
    ) -> None:
        request = Request(scope, receive)
        try:
            request = await _prepared(request, self._limit, self._authenticate)
            answer = await self._call(route, plan, request)
        except KeyplaneError as error:
            answer = self._failed(error)
        if answer is None:
            # The route then prepares the request again (its body is the one read here).
            await self.app(request.scope, request.receive, send)
            return
        await answer(request.scope, request.receive, send)

    @staticmethod
    async def _call(route: APIRoute, plan: _Plan, request: Request) -> Response | None:
        if request.app.dependency_overrides:
            return None
        body: Any = PydanticUndefined
        if plan.body is not None and await request.body():
            body = await request.json()
        values = await plan.solve(request, body, {})
        if values is None:
            return None
        endpoint = plan.call
        assert endpoint is not None
        if plan.awaits:
            raw = await endpoint(**values)
        else:
            raw = await run_in_threadpool(endpoint, **values)
        if isinstance(raw, Response):
            return raw
        field = route.response_field
        assert field is not None
        value, errors = field.validate(raw, {}, loc=("response",))
        if errors:
            raise ResponseValidationError(errors, body=raw)
        content = field.serialize_json(
            value,
            include=route.response_model_include,
            exclude=route.response_model_exclude,
            by_alias=route.response_model_by_alias,
            exclude_unset=route.response_model_exclude_unset,
            exclude_defaults=route.response_model_exclude_defaults,
            exclude_none=route.response_model_exclude_none,
        )
        return Response(content, status_code=route.status_code or 200, media_type=_JSON)


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
