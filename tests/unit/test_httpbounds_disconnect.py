"""The keyplane protocol tells an app that its client went away, with no task of the app's waiting
in ``receive()``: the ``DisconnectWatch`` in each request's scope calls back from
``connection_lost`` (the gateway's relay cancels its upstream exchange on it).

A real uvicorn server on loopback with the keyplane protocol; a raw socket on the other end.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from keyplane.asgi import DISCONNECT_WATCH, DisconnectWatch
from tests.support.threaded import serving

#: Per request path: "called" once the watch called back, "answered" once the app answered.
EVENTS: dict[str, threading.Event] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the body, then: on /hold, waits (at most 10 s) to be told the client left; on /answer,
    answers at once and stops watching."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    watch: DisconnectWatch = scope[DISCONNECT_WATCH]
    gone = asyncio.get_running_loop().create_future()
    path = scope["path"]

    def went() -> None:
        EVENTS[path + ":called"].set()
        gone.set_result(None)

    watch.add(went)
    if path.startswith("/answer"):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        watch.discard(went)
        EVENTS[path + ":answered"].set()
        return
    await asyncio.wait_for(gone, timeout=10.0)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with serving(app) as chosen:
        yield chosen


def request(port: int, path: str, body_bytes: int) -> socket.socket:
    for what in ("called", "answered"):
        EVENTS[f"{path}:{what}"] = threading.Event()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {body_bytes}\r\n\r\n"
    sock.sendall(head.encode() + b"x" * body_bytes)
    return sock


# A small body, and one past uvicorn's 64 KiB high-water mark (which pauses reading). The close may
# come before the app watches or after: the watch tells it either way.
@pytest.mark.parametrize("body_bytes", [10, 200_000])
def test_a_client_that_goes_away_is_told_to_the_watch(port: int, body_bytes: int) -> None:
    path = f"/hold/{body_bytes}"
    sock = request(port, path, body_bytes)
    sock.close()
    assert EVENTS[path + ":called"].wait(timeout=10), "the watch did not call back"


def test_a_callback_discarded_after_the_answer_is_not_called(port: int) -> None:
    path = "/answer/1"
    sock = request(port, path, 10)
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    assert EVENTS[path + ":answered"].wait(timeout=10)
    sock.close()
    # A second request's connection closing proves the server went on; the first was not told.
    other = "/hold/after"
    request(port, other, 10).close()
    assert EVENTS[other + ":called"].wait(timeout=10)
    assert not EVENTS[path + ":called"].is_set()
