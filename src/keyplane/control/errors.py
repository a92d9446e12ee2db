"""The one place the Management API turns errors into HTTP answers: ``{"code", "error"}``.

Owns the control plane's error map (which ``keyplane.domain.errors`` kind is which HTTP status:
``http_status``), the error responses the OpenAPI document lists (``RESPONSES``), the exception
handlers, and the bare 500 the access log sends when an exception escapes them. Nothing else in
the control plane builds an error body. Unexpected exceptions become a 500 with no detail; the
trace goes to the log, never to the client.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from keyplane.asgi import Send, error_body, send_json_bytes
from keyplane.control import schemas
from keyplane.domain.errors import (
    Conflict,
    InvalidArgument,
    KeyplaneError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
)

log = structlog.get_logger("keyplane.control")

#: The control plane's error map: the status of each kind of error; a subclass's own entry wins
#: over its base's (``http_status`` walks the class's MRO).
STATUS: dict[type[KeyplaneError], int] = {
    InvalidArgument: 400,
    MethodNotAllowed: 405,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    Unauthenticated: 401,
    PermissionDenied: 403,
    NotFound: 404,
    Conflict: 409,
    RateLimited: 429,
    Unavailable: 503,
}

#: The error answers every operation of the OpenAPI document lists.
RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorOut} for code in (400, 401, 403, 404, 413, 415)
}

_INTERNAL = ("internal", "Internal error.")


def http_status(error: KeyplaneError) -> int:
    """The HTTP status the Management API answers ``error`` with."""
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


async def send_internal_error(send: Send) -> None:
    """The bare 500, sent on plain ASGI (the access log, when an exception escaped the app)."""
    await send_json_bytes(send, 500, error_body(*_INTERNAL))


def error_response(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"code": code, "error": message}, status_code=status, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of this path answers (RFC 9110 wants them in a 405's ``Allow``):
    Starlette names only the methods of the first route that matched the path."""
    methods: set[str] = set()

    def visit(routes: Any, scope: dict[str, Any]) -> None:
        for route in routes:
            match, child = route.matches(scope)
            if match == Match.NONE:
                continue
            if getattr(route, "methods", None):
                methods.update(route.methods)
                continue
            # An included router: its own routes decide.
            inner = getattr(route, "routes", None)
            if inner is None:
                inner = getattr(getattr(route, "original_router", None), "routes", None)
            if inner is not None:
                visit(inner, {**scope, **child})

    visit(request.app.routes, {**request.scope, "method": "GET"})
    return sorted(methods)


def keyplane_error(error: KeyplaneError) -> JSONResponse:
    """The answer to ``error`` (the exception handler's, and the fast paths')."""
    headers: dict[str, str] = {}
    if isinstance(error, Unauthenticated):
        headers["www-authenticate"] = "Bearer"
    return error_response(http_status(error), error.code, error.message, **headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(KeyplaneError)
    async def _keyplane(_request: Request, error: KeyplaneError) -> JSONResponse:
        return keyplane_error(error)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for item in error.errors()[:5]:
            if item.get("type") == "json_invalid":
                problems.append("body: is not valid JSON")
                continue
            field = _field(tuple(item.get("loc", ())))
            problems.append(f"{field or 'body'}: {item.get('msg', 'is invalid')}")
        return error_response(400, "invalid-argument", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            return error_response(404, "not-found", "No such route.")
        if error.status_code == 405:
            return error_response(
                405,
                "invalid-argument",
                "Method not allowed on this route.",
                allow=", ".join(_allowed_methods(request)),
            )
        detail = error.detail if isinstance(error.detail, str) else json.dumps(error.detail)
        return error_response(error.status_code, "invalid-argument", detail)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error("unhandled_error", path=request.url.path, exc_info=error)
        return error_response(500, *_INTERNAL)
