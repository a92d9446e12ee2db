"""Bounded request heads for every keyplane server (control plane, gateways, model server).

uvicorn's httptools protocol buffers a request line and each header value whole, by repeated
concatenation, before the application sees anything: a 200 MB ``Authorization`` header cost a
gateway 48 s and 700 MB. :func:`bounded_protocol` returns the same protocol with two caps — the
bytes of the request line plus headers, and the number of headers — checked as data arrives, and
answered ``431`` with ``connection: close`` before another byte is read.

It also lets ordinary clients read an early answer. A server that refuses a body over its cap
answers before reading the rest; closing then, with the client's bytes still unread, makes the
kernel reset the connection, and a client still writing (urllib, httpx, the openai SDK) sees the
reset instead of the 413. So when the answer is complete but the body is not, the rest of the body
is read and thrown away — up to ``max_drain_bytes`` and ``max_linger_seconds`` — before the
connection closes (or stays open, if the client keeps it alive). Past either bound it closes.

And it tells an app when its client goes away without the app keeping a task in ``receive()``
for it: each request's scope carries a ``keyplane.asgi.DisconnectWatch`` (under
``DISCONNECT_WATCH``), whose callbacks ``connection_lost`` calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from keyplane.asgi import DISCONNECT_WATCH, error_body

DEFAULT_MAX_HEAD_BYTES = 64 * 1024
DEFAULT_MAX_HEADERS = 100
#: How much of a refused body is read and dropped, and for how long, so the client reads the answer.
DEFAULT_MAX_DRAIN_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_LINGER_SECONDS = 10.0


def _refusal(status: bytes, message: str) -> bytes:
    """A whole answer in keyplane's error shape, closing the connection."""
    body = error_body("invalid-argument", message)
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


_RESPONSE_431 = _refusal(
    b"431 Request Header Fields Too Large", "Request line and headers are too large."
)
#: What a request no HTTP parser accepts (an unknown method, a broken line) is answered.
_RESPONSE_400 = _refusal(b"400 Bad Request", "Invalid HTTP request.")


class _HeadTooLarge(Exception):
    """Raised from a parser callback; httptools stops parsing and re-raises it wrapped."""


class _CloseAfterBody:
    """A connection's transport as its request cycles see it, but for ``write()`` and
    ``close()``.

    ``write``: a response head whose body has a known, non-zero length is held back and goes out
    with the body's first bytes in one ``transport.write`` (one system call, one segment) instead
    of two; uvicorn writes the head in ``http.response.start`` and the body apart. A held head
    never waits past the current event-loop turn (a ``call_soon`` flush), nor past ``close()``.

    ``close``: while the request's body is still arriving, the protocol closes once it has been
    read (or a bound passes)."""

    __slots__ = (
        "_cycle",
        "_flush_handle",
        "_held",
        "_loop",
        "_protocol",
        "_write",
        "get_extra_info",
        "is_closing",
    )

    def __init__(self, protocol: BoundedHttpToolsProtocol, transport: asyncio.Transport) -> None:
        self._protocol = protocol
        self._write = transport.write
        self._loop = protocol.loop
        self._held: bytes | None = None
        self._cycle: object = None
        self._flush_handle: asyncio.Handle | None = None
        self.is_closing = transport.is_closing
        self.get_extra_info = transport.get_extra_info

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._write(held + data)
            return
        cycle = self._protocol.cycle
        if cycle is not None and cycle is not self._cycle:
            # A cycle's first write is its head (http.response.start); if a body of known
            # length follows, the body's first write takes the head along.
            self._cycle = cycle
            if (
                cycle.chunked_encoding is False
                and cycle.expected_content_length > 0
                and cycle.scope["method"] != "HEAD"
            ):
                self._held = data
                handle = self._flush_handle
                if handle is None or handle.cancelled():
                    self._flush_handle = self._loop.call_soon(self.flush)
                return
        self._write(data)

    def flush(self) -> None:
        """Write a held head now."""
        self._flush_handle = None
        held = self._held
        if held is not None:
            self._held = None
            if not self.is_closing():
                self._write(held)

    def close(self) -> None:
        self.flush()
        self._protocol.close_after_body()


class _Disconnects:
    """A connection's ``keyplane.asgi.DisconnectWatch``: the callbacks its ``connection_lost``
    calls. Watching resumes reading, as a ``receive()`` waiting for ``http.disconnect`` would, so
    a client's close is seen even after a large body paused reading."""

    __slots__ = ("_callbacks", "_flow", "_lost")

    def __init__(self, flow: FlowControl) -> None:
        self._flow = flow
        self._callbacks: set[Callable[[], object]] = set()
        self._lost = False

    def add(self, callback: Callable[[], object]) -> None:
        if self._lost:  # gone before the app asked: told at once, as receive() would tell it
            callback()
            return
        self._callbacks.add(callback)
        self._flow.resume_reading()

    def discard(self, callback: Callable[[], object]) -> None:
        self._callbacks.discard(callback)

    def lost(self) -> None:
        self._lost = True
        callbacks = self._callbacks
        while callbacks:
            callbacks.pop()()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head over ``max_head_bytes`` bytes or
    ``max_headers`` headers with a 431, and draining a body its answer did not wait for."""

    max_head_bytes = DEFAULT_MAX_HEAD_BYTES
    max_headers = DEFAULT_MAX_HEADERS
    max_drain_bytes = DEFAULT_MAX_DRAIN_BYTES
    max_linger_seconds = DEFAULT_MAX_LINGER_SECONDS

    # Bytes seen since the current head began; whether a body is being read (between the end of
    # a head and the end of its message); whether a message ended in the chunk being fed.
    _head_bytes = 0
    _in_body = False
    _message_ended = False
    # Bytes of a body read after its answer was complete; the close waiting for that body's end.
    _drained = 0
    _linger: asyncio.TimerHandle | None = None
    _closer: _CloseAfterBody | None = None
    _disconnects: _Disconnects | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._closer = _CloseAfterBody(self, transport)
        self._disconnects = _Disconnects(self.flow)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)
        if self._disconnects is not None:
            self._disconnects.lost()

    def data_received(self, data: bytes) -> None:
        """uvicorn's ``data_received``, counting the bytes of an unfinished head, and of a body
        read only to be dropped."""
        self._message_ended = False
        if self._in_body and self.cycle is not None and self.cycle.response_complete:
            self._drained += len(data)
            if self._drained > self.max_drain_bytes:
                self._close_now()
                return
        try:
            self._feed(data)
        except _HeadTooLarge:
            self._refuse()

    def _feed(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            if isinstance(error.__context__, _HeadTooLarge):
                raise error.__context__ from None
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if not self._in_body and not self._message_ended:
            # Still inside a head: everything since it began counts. (A chunk that also ended
            # the previous message is not counted; the exact check at the head's end covers it.)
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                raise _HeadTooLarge

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.max_headers:
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        size = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
        if size > self.max_head_bytes:
            raise _HeadTooLarge
        self._head_bytes = 0
        self._in_body = True
        self._drained = 0
        self.scope[DISCONNECT_WATCH] = self._disconnects  # type: ignore[typeddict-unknown-key]
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.transport is self.transport:
            self.cycle.transport = self._closer  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._in_body = False
        self._message_ended = True
        super().on_message_complete()
        if self._linger is not None:
            self._close_now()

    # -- closing after an unread body ----------------------------------------------------------

    def close_after_body(self) -> None:
        """Close now, or, while the request's body is still arriving, once it has arrived."""
        if not self._in_body or self.transport.is_closing():
            self._close_now()
        elif self._linger is None:
            self._linger = self.loop.call_later(self.max_linger_seconds, self._close_now)
            self.flow.resume_reading()

    def _close_now(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request its parser refused, in keyplane's error shape."""
        self.transport.write(_RESPONSE_400)
        self.transport.close()

    def _refuse(self) -> None:
        if self.logger.isEnabledFor(10):
            self.logger.debug("Request head too large; answered 431.")
        self.transport.write(_RESPONSE_431)
        self.transport.close()


def bounded_protocol(
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    max_headers: int = DEFAULT_MAX_HEADERS,
    *,
    max_drain_bytes: int = DEFAULT_MAX_DRAIN_BYTES,
    max_linger_seconds: float = DEFAULT_MAX_LINGER_SECONDS,
) -> type[BoundedHttpToolsProtocol]:
    """The protocol class to hand uvicorn as ``http=``, with these caps."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "max_head_bytes": max_head_bytes,
            "max_headers": max_headers,
            "max_drain_bytes": max_drain_bytes,
            "max_linger_seconds": max_linger_seconds,
        },
    )
