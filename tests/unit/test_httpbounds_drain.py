"""The drain of a refused body is bounded: in bytes, and in time.

A real uvicorn server on loopback, with the keyplane protocol and small bounds, serving an app that
refuses every body before reading it; a raw socket on the other end counts what it could send.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from keyplane.httpbounds import bounded_protocol
from tests.support.threaded import serving

DRAIN_BYTES = 1024 * 1024
LINGER_SECONDS = 0.5


async def refuse(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 413, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"no"})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    protocol = bounded_protocol(max_drain_bytes=DRAIN_BYTES, max_linger_seconds=LINGER_SECONDS)
    with serving(refuse, protocol=protocol, timeout_keep_alive=60) as chosen:
        yield chosen


def push(port: int, head: bytes, body_bytes: int, *, deadline_s: float) -> tuple[bytes, int, bool]:
    """Send ``head`` then up to ``body_bytes`` bytes, reading all the while. Returns what was
    answered, how many body bytes were sent, and whether the server ended the connection."""
    answer = bytearray()
    sent = 0
    chunk = b"a" * 65536
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        sock.settimeout(0.05)
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
                if not data:
                    return bytes(answer), sent, True
                answer += data
            except TimeoutError:
                pass
            except ConnectionResetError:
                return bytes(answer), sent, True
            if sent < body_bytes:
                try:
                    sent += sock.send(chunk[: body_bytes - sent])
                except TimeoutError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    return bytes(answer), sent, True
    return bytes(answer), sent, False


def head(declared: int, *, close: bool) -> bytes:
    connection = b"connection: close\r\n" if close else b""
    return (
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: "
        + str(declared).encode()
        + b"\r\n"
        + connection
        + b"\r\n"
    )


@pytest.mark.parametrize("close", [True, False], ids=["connection-close", "keep-alive"])
def test_a_body_past_the_drain_bound_ends_the_connection(port: int, close: bool) -> None:
    declared = 512 * 1024 * 1024
    answer, sent, ended = push(port, head(declared, close=close), declared, deadline_s=30)

    assert ended, f"still open after sending {sent} bytes"
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert sent < 64 * 1024 * 1024  # the bound plus what the kernel's buffers held


def test_a_stalled_body_ends_the_connection_after_the_linger_time(port: int) -> None:
    # The server's keep-alive timeout (60 s) is past the deadline: only the linger time ends it.
    answer, sent, ended = push(port, head(10_000, close=True), 100, deadline_s=30)

    assert ended
    assert sent == 100
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]


def test_a_body_within_the_drain_bound_is_read_and_the_answer_arrives_whole(port: int) -> None:
    size = DRAIN_BYTES // 2
    answer, sent, ended = push(port, head(size, close=True), size, deadline_s=30)

    assert ended
    assert sent == size
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert answer.endswith(b"no"), answer[-200:]
