"""``H1Upstream``: the gateway's default client to the model servers, HTTP/1.1 over TCP on asyncio
protocols, responses parsed by httptools.

aiohttp's client builds a request, its headers and payload objects, a timer and a trace context
for each exchange, and writes the head and body in several calls: that machinery was most of the
gateway's CPU per request past keyplane's own checks (``ClientSession._prepare_headers`` 24 %,
``StreamWriter._writelines`` 17 % of its samples). Here a request is one prebuilt ``bytes``
written in one ``transport.write``, and the answer is httptools' callbacks filling the pooled
connection, which is also the response the relay reads. ``https://`` URLs (and URLs with
credentials in them) still go through aiohttp.

What it keeps of aiohttp's behaviour: a keep-alive pool per (host, port) with the same idle
keep-alive (``KEEPALIVE_SECONDS``) and limit; the read timeout bounds silence, not a whole answer;
a connection the server closed before or while answering is an ``UpstreamError`` (a silent one a
``TimeoutError``); a connection is reused only when its answer was read to the end, the server
kept it alive and nothing else came on it. A slow reader pauses the socket (backpressure).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import cast
from urllib.parse import urlsplit

import httptools

from keyplane.gateway.upstream import (
    KEEPALIVE_SECONDS,
    POOL_LIMIT,
    AiohttpUpstream,
    UpstreamError,
    UpstreamResponse,
)

__all__ = ["H1Upstream"]

#: Buffered body bytes past which the socket stops being read until the relay takes them.
_HIGH_WATER = 256 * 1024
#: Bytes an answer's status line and headers may take (aiohttp's limits come to about as much): a
#: model server that sends more is broken, and its head would otherwise be buffered without end.
MAX_HEAD = 64 * 1024
_EVENT_STREAM = b"text/event-stream"


class _Target:
    """What a URL's request needs, worked out once per URL: the pool it goes to and the head."""

    __slots__ = ("address", "head")

    def __init__(self, address: tuple[str, int], head: bytes) -> None:
        self.address = address
        self.head = head


class H1Upstream:
    """Upstreams over pooled HTTP/1.1 connections (see the module's docstring)."""

    def __init__(
        self,
        *,
        read_timeout: float = 300.0,
        connect_timeout: float = 5.0,
        limit: int = POOL_LIMIT,
        keepalive: float = KEEPALIVE_SECONDS,
    ) -> None:
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self._limit = limit
        self._tls = AiohttpUpstream(read_timeout=read_timeout, connect_timeout=connect_timeout)
        self._targets: dict[str, _Target | None] = {}
        #: Idle connections per (host, port), the most recently used last.
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._busy = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._tls.start()
        self._sweeper = self._loop.call_later(self.keepalive / 2, self._sweep)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for idle in self._idle.values():
            for connection in idle:
                connection.transport.close()
        self._idle.clear()
        await self._tls.close()

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        target = self._targets.get(url)
        if target is None:
            target = self._target(url) if url not in self._targets else None
            if target is None:  # not ours: https, credentials in the URL, anything unusual
                return self._tls.post(url, body, headers)
        return _Exchange(self, target, body, headers)

    def _target(self, url: str) -> _Target | None:
        target: _Target | None = None
        parts = urlsplit(url)
        plain = url.isascii() and url.isprintable() and " " not in url
        if plain and parts.scheme == "http" and parts.hostname and "@" not in parts.netloc:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            head = f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n".encode()
            target = _Target((parts.hostname, parts.port or 80), head)
        if len(self._targets) >= 4096:  # models x endpoints; a bound all the same
            self._targets.clear()
        self._targets[url] = target
        return target

    async def _acquire(self, address: tuple[str, int]) -> _Connection:
        """A connection to ``address``: the most recently used idle one, or a new one. At most
        ``limit`` are in use at once (idle ones do not count, as in aiohttp)."""
        while self._busy >= self._limit:
            assert self._loop is not None
            waiter = self._loop.create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake()  # woken but not going on: pass the turn
                raise
        self._busy += 1
        idle = self._idle.get(address)
        if idle:
            now = self._now()
            while idle:
                connection = idle.pop()
                if connection.reusable(now, self.keepalive):
                    return connection
                connection.transport.close()
        try:
            return await self._connect(address)
        except BaseException:
            self._done()
            raise

    async def _connect(self, address: tuple[str, int]) -> _Connection:
        assert self._loop is not None, "H1Upstream.start() was not awaited"
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await self._loop.create_connection(
                    lambda: _Connection(self), *address
                )
        except OSError as error:  # TimeoutError, a silent server, is told apart
            if isinstance(error, TimeoutError):
                raise
            raise UpstreamError(f"ClientConnectorError: {type(error).__name__}") from None
        return connection

    def _release(self, connection: _Connection, address: tuple[str, int]) -> None:
        self._done()
        if self._closed or not connection.finished_cleanly():
            connection.transport.abort()
            return
        connection.idle_since = self._now()
        idle = self._idle.get(address)
        if idle is None:
            idle = self._idle[address] = []
        idle.append(connection)

    def _done(self) -> None:
        """A connection in use is no longer: one waiting request may go on."""
        self._busy -= 1
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _wake(self) -> None:
        self._busy += 1
        self._done()

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _sweep(self) -> None:
        """Close the connections idle for longer than the keep-alive (every keepalive / 2)."""
        now = self._now()
        for idle in self._idle.values():
            keep = []
            for connection in idle:
                if connection.reusable(now, self.keepalive):
                    keep.append(connection)
                else:
                    connection.transport.close()
            idle[:] = keep
        assert self._loop is not None
        self._sweeper = self._loop.call_later(self.keepalive / 2, self._sweep)


class _Exchange:
    """One POST over a pooled connection; the connection is the response."""

    __slots__ = ("_body", "_connection", "_headers", "_target", "_upstream")

    def __init__(
        self, upstream: H1Upstream, target: _Target, body: bytes, headers: Mapping[str, str]
    ) -> None:
        self._upstream = upstream
        self._target = target
        self._body = body
        self._headers = headers
        self._connection: _Connection | None = None

    async def __aenter__(self) -> _Connection:
        text = "".join([f"{name}: {value}\r\n" for name, value in self._headers.items()])
        if text.count("\n") != len(self._headers) or text.count("\r") != len(self._headers):
            raise UpstreamError("InvalidHeader")  # a CR or LF inside a name or value
        try:
            head = text.encode("latin-1")
        except UnicodeEncodeError:
            raise UpstreamError("InvalidHeader") from None
        body = self._body
        request = b"%s%sContent-Length: %d\r\n\r\n%s" % (self._target.head, head, len(body), body)
        connection = await self._upstream._acquire(self._target.address)
        try:
            await connection.exchange(request)
        except BaseException:
            self._upstream._release(connection, self._target.address)  # closes it
            raise
        self._connection = connection
        return connection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection = self._connection
        if connection is not None:
            self._connection = None
            self._upstream._release(connection, self._target.address)


class _Connection(asyncio.Protocol):
    """A pooled connection, its httptools parser, and the answer being read on it."""

    transport: asyncio.Transport

    def __init__(self, upstream: H1Upstream) -> None:
        self._upstream = upstream
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._headers: list[tuple[str, str]] = []
        self._keep_alive = False
        self._in_exchange = False
        self._head = False
        self._delimited = False
        self._whole = False
        self._complete = False
        self._error: Exception | None = None
        self._last_data = 0.0
        self._head_bytes = 0
        self.closed = False
        self.idle_since = 0.0
        self.status = 0
        self.is_stream = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._head and not self._delimited and not self._complete:
            self.on_message_complete()  # a body that ends where the connection does
        if self._in_exchange and not self._complete and self._error is None:
            self._error = UpstreamError("ServerDisconnectedError")
            self._wake()

    def data_received(self, data: bytes) -> None:
        if not self._in_exchange or self._complete:
            # Nothing is asked on this connection: what came is not an answer to anything.
            self._error = self._error or UpstreamError("unexpected data")
            self.transport.abort()
            return
        self._last_data = self._upstream._now()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(UpstreamError(f"ClientResponseError: {error}"))
            return
        if not self._head:  # the head is still coming: what the parser holds of it is bounded
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._fail(UpstreamError("ClientResponseError: the answer's head is too large"))

    def pause_writing(self) -> None:
        pass  # the request is written whole; the answer waits on it anyway

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-type":
            self.is_stream = value.partition(b";")[0].strip().lower() == _EVENT_STREAM
        elif lower == b"content-length" or lower == b"transfer-encoding":
            self._delimited = True
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status < 200 or self.status in (204, 304):
            self._delimited = True  # no body at all
        self._keep_alive = self._parser.should_keep_alive()
        self._head = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and not self._whole:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._complete = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()

    # -- one exchange

    async def exchange(self, request: bytes) -> None:
        """Send ``request``; return when the answer's head has come."""
        if self.closed:
            raise UpstreamError("ServerDisconnectedError")
        self._in_exchange = True
        self._head = self._complete = self._delimited = self._whole = self.is_stream = False
        self._headers = []
        self._head_bytes = 0
        self.status = 0
        upstream = self._upstream
        self._last_data = upstream._now()
        assert upstream._loop is not None
        self._timer = upstream._loop.call_at(
            self._last_data + upstream.read_timeout, self._check_silence
        )
        self.transport.write(request)
        while not self._head:
            await self._wait()

    @property
    def ended(self) -> bool:
        return self._complete and not self._chunks

    def header_items(self) -> Iterable[tuple[str, str]]:
        return self._headers

    async def read(self) -> bytes:
        self._whole = True  # the whole body is asked for: no pause until it is all here
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        while not self._complete:
            await self._wait()
        chunks = self._take()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def __aiter__(self) -> _Connection:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self._complete:
                raise StopAsyncIteration
            await self._wait()
        chunks = self._take()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def reusable(self, now: float, keepalive: float) -> bool:
        """Idle, open, and not for longer than ``keepalive``."""
        return not self.closed and self._error is None and now - self.idle_since < keepalive

    def finished_cleanly(self) -> bool:
        """The answer was read to its end on a connection the server keeps open."""
        done = (
            self._complete
            and self._keep_alive
            and not self._chunks
            and not self.closed
            and self._error is None
        )
        self._in_exchange = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return done

    def _take(self) -> list[bytes]:
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        return chunks

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        assert self._upstream._loop is not None
        waiter = self._waiter = self._upstream._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        self._error = error
        self.transport.abort()
        self._wake()

    def _check_silence(self) -> None:
        """The read timeout: nothing came for ``read_timeout`` while an answer was awaited."""
        self._timer = None
        if not self._in_exchange or self._complete:
            return
        upstream = self._upstream
        now = upstream._now()
        due = self._last_data + upstream.read_timeout
        if self._paused or now < due:  # paused: the silence is ours, not the server's
            assert upstream._loop is not None
            self._timer = upstream._loop.call_at(
                max(due, now + 0.001) if not self._paused else now + upstream.read_timeout,
                self._check_silence,
            )
            return
        self._fail(TimeoutError())
