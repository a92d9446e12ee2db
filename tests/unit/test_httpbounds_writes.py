"""The keyplane protocol writes a response whose body has a known length in one
``transport.write``, head and body together (uvicorn writes them apart), and otherwise writes what
it wrote before, no later than the event-loop turn in which the app sent it.

In process: the protocol over a transport that records its writes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from keyplane.httpbounds import bounded_protocol


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def connect(app: Any, request: bytes) -> RecordingTransport:
    """A fresh connection serving ``app``, fed ``request``; its transport."""
    config = uvicorn.Config(app, log_config=None, lifespan="off", http=bounded_protocol())
    config.load()
    protocol_class: Any = config.http_protocol_class
    protocol = protocol_class(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    return transport


async def turns(count: int = 20) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def exchange(app: Any, request: bytes) -> RecordingTransport:
    transport = connect(app, request)
    await turns()
    return transport


GET = b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n"


def answer(headers: list[tuple[bytes, bytes]], *bodies: bytes) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index, body in enumerate(bodies):
            more = index < len(bodies) - 1
            await send({"type": "http.response.body", "body": body, "more_body": more})

    return app


async def test_a_body_of_known_length_goes_out_with_its_head_in_one_write() -> None:
    transport = await exchange(answer([(b"content-length", b"5")], b"hello"), GET)
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"content-length: 5\r\n\r\nhello")


async def test_a_body_in_pieces_sends_its_head_with_the_first() -> None:
    transport = await exchange(answer([(b"content-length", b"6")], b"abc", b"def"), GET)
    assert len(transport.writes) == 2
    assert transport.writes[0].endswith(b"\r\n\r\nabc")
    assert transport.writes[1] == b"def"


@pytest.mark.parametrize(
    ("headers", "request_bytes", "body"),
    [
        ([], GET, b"x"),  # no length: chunked
        ([(b"content-length", b"0")], GET, b""),
        ([(b"content-length", b"5")], b"HEAD /x HTTP/1.1\r\nhost: x\r\n\r\n", b"hello"),
    ],
)
async def test_a_head_without_a_known_body_is_written_at_once(
    headers: list[tuple[bytes, bytes]], request_bytes: bytes, body: bytes
) -> None:
    written_at_start: list[int] = []
    transports: list[RecordingTransport] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        written_at_start.append(len(transports[0].writes))
        await send({"type": "http.response.body", "body": body})

    transports.append(connect(app, request_bytes))
    await turns()
    assert written_at_start == [1]
    assert transports[0].writes[0].endswith(b"\r\n\r\n")


async def test_a_held_head_goes_out_within_the_loop_turn_if_the_body_waits() -> None:
    release = asyncio.Event()
    written_after_a_turn: list[int] = []
    transports: list[RecordingTransport] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        length = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": length})
        await asyncio.sleep(0)
        written_after_a_turn.append(len(transports[0].writes))
        await release.wait()
        await send({"type": "http.response.body", "body": b"ok"})

    transports.append(connect(app, GET))
    await turns()
    release.set()
    await turns()
    assert written_after_a_turn == [1]
    assert transports[0].writes[0].endswith(b"content-length: 2\r\n\r\n")
    assert transports[0].writes[1] == b"ok"


async def test_an_app_that_fails_after_its_head_still_sends_the_head_before_closing() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        length = [(b"content-length", b"9")]
        await send({"type": "http.response.start", "status": 200, "headers": length})
        raise RuntimeError("boom")

    transport = await exchange(app, GET)
    assert transport.closed
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
