"""How the model server reads a request and delivers its reply: the per-request test knobs, a
bounded body, the simulated model's pace, and a watch for the client going away.

When the client goes first, the delivery is cancelled at its next await, which is how a stream
stops generating promptly and frees whatever it held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Final

from keyplane.asgi import Receive, Scope, Send, send_json_bytes
from keyplane.modelserver.config import ModelServerConfig
from keyplane.modelserver.http import HTTPError, Reply

__all__ = ["ClientGone", "Knobs", "deliver", "race_disconnect", "read_body", "read_knobs"]

_DISCARD_LIMIT: Final = 64 * 1024 * 1024
_YIELD_EVERY: Final = 32
_SSE_HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


@dataclass(slots=True)
class Knobs:
    latency_s: float
    token_latency_s: float
    fail_status: int | None


class ClientGone(Exception):
    """The client disconnected before we had its whole request."""


def read_knobs(config: ModelServerConfig, scope: Scope) -> tuple[Knobs, int | None]:
    """The per-request test headers, and the declared Content-Length, in one header pass."""
    knobs = Knobs(config.latency_s, config.token_latency_s, None)
    declared: int | None = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            declared = int(value) if value.isdigit() else None
        elif name.startswith(b"x-keyplane-"):
            if name == b"x-keyplane-latency-ms":
                knobs.latency_s = _milliseconds(name, value)
            elif name == b"x-keyplane-token-latency-ms":
                knobs.token_latency_s = _milliseconds(name, value)
            elif name == b"x-keyplane-fail-status":
                status = int(value) if value.isdigit() else 0
                if not 400 <= status <= 599:
                    raise HTTPError(400, "x-keyplane-fail-status must be 400..599.")
                knobs.fail_status = status
    return knobs, declared


def _milliseconds(name: bytes, value: bytes) -> float:
    try:
        ms = float(value)
    except ValueError:
        ms = -1.0
    if not 0 <= ms <= 3_600_000:
        raise HTTPError(400, f"{name.decode()} must be a number of milliseconds in 0..3600000.")
    return ms / 1000


async def read_body(receive: Receive, declared: int | None, limit: int) -> bytes:
    too_large = HTTPError(
        413, f"Request body too large; the limit is {limit} bytes.", code="request_too_large"
    )
    if declared is not None and declared > _DISCARD_LIMIT:
        # Not worth draining: answer and drop the connection.
        too_large.headers = [(b"connection", b"close")]
        raise too_large
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False) and len(body) <= limit:
        return body  # the common case: the whole body in one message
    parts = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            parts.append(chunk)
    if size > limit:
        # Answering only after the body has been read keeps the connection usable and stops the
        # client from seeing a reset instead of our 413.
        raise too_large
    return b"".join(parts)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def race_disconnect(receive: Receive, work: Coroutine[Any, Any, bool]) -> bool:
    """Run ``work`` until it finishes or the client disconnects; True if it finished in full.

    When the client goes first, ``work`` is cancelled at its next await, which is how a stream
    stops generating promptly and frees whatever it held.
    """
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_until_disconnect(receive))
    try:
        done, _ = await asyncio.wait((work_task, watch_task), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        work_task.cancel()
        watch_task.cancel()
        raise
    # Finishing the response also wakes the watcher (uvicorn then reports "disconnect"), so when
    # both are done the work decides.
    if work_task in done:
        watch_task.cancel()
        return work_task.result()
    work_task.cancel()
    # wait() neither raises the task's CancelledError nor swallows our own cancellation.
    await asyncio.wait((work_task,))
    return False


async def deliver(send: Send, reply: Reply, knobs: Knobs) -> bool:
    """Send ``reply`` at the simulated model's pace; False if the client is gone."""
    if knobs.latency_s > 0:
        await asyncio.sleep(knobs.latency_s)
    try:
        if reply.body is not None:
            await send_json_bytes(send, reply.status, reply.body)
            return True
        assert reply.chunks is not None
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        pause = knobs.token_latency_s
        tokens = 0
        for chunk, paced in reply.chunks:
            if paced:
                if pause > 0:
                    await asyncio.sleep(pause)
                else:
                    tokens += 1
                    if tokens % _YIELD_EVERY == 0:
                        # uvicorn's send never blocks on a fast client, so yield now and then
                        # to let the disconnect watcher run.
                        await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:
        # Some servers (uvicorn's h11 protocol) raise on send after a disconnect.
        return False
    return True
