"""The Management API's plain-ASGI middleware: the access log.

(The body's bounds — authenticated first, capped at ``max_body_bytes``, read leniently — are the
route class's, ``keyplane.control.routing.ManagementRoute``: they apply per route, before FastAPI
parses the body.)
"""

import time

import structlog
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp

from keyplane import logs
from keyplane.asgi import Message, Receive, Scope, Send
from keyplane.control import errors

log = structlog.get_logger("keyplane.control")

_ROUTINE_PATHS = ("/internal/", "/healthz")


class AccessLog:
    """One log line per request: method, path, status, time. Never headers or bodies, which may
    carry secrets. Plain ASGI: FastAPI's ``@app.middleware`` costs a fifth of a request here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500
        started = False

        async def sending(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except ClientDisconnect:
            status = 499  # gone mid-request: nothing to answer, and nothing went wrong here
        except Exception as error:
            # The error handler has answered already; re-raising (as Starlette does) would make
            # the server drop the client's keep-alive connection and log the trace twice.
            log.error("unhandled_error", path=scope["path"], exc_info=error)
            if status == 500 and not started:
                await errors.send_internal_error(sending)
        finally:
            # Probes and the gateways' feed (a long-poll every few seconds, per gateway) are
            # routine: at debug, unless they failed.
            routine = status < 400 and scope["path"].startswith(_ROUTINE_PATHS)
            level = "debug" if routine else "info"
            line: dict[str, str | int | float] = {
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "ms": round((time.perf_counter() - began) * 1000, 2),
            }
            # The same line, rendered directly while keyplane's JSON logging is in force.
            if not logs.write_line(level, "request", line):
                getattr(log, level)("request", **line)
