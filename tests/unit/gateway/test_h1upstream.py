"""``H1Upstream``, the gateway's HTTP/1.1 client to the model servers, against real servers on
loopback (raw asyncio servers that answer as scripted): what goes on the wire, keep-alive reuse,
chunked and read-until-close bodies, a server that closes or dies, a slow reader, the read
timeout. A connection is reused only when its answer was read to its end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import cast

import pytest

from keyplane.gateway.h1upstream import _HIGH_WATER, MAX_HEAD, H1Upstream, _Connection
from keyplane.gateway.upstream import KEEPALIVE_SECONDS, POOL_LIMIT, UpstreamError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEADERS = {"content-type": "application/json", "accept-encoding": "identity"}
JSON = b'{"ok":true}'


class Server:
    """A loopback server running ``handler`` for each connection, counting connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went, or the test ended with this connection open
        finally:
            writer.close()

    async def request(self, reader: asyncio.StreamReader) -> bytes:
        """One request off the wire (head and Content-Length body), recorded."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        whole = head + await reader.readexactly(length)
        self.requests.append(whole)
        return whole


@asynccontextmanager
async def serving(handler: Callable[[Server], Handler]) -> AsyncIterator[Server]:
    server = Server(lambda r, w: asyncio.sleep(0))
    server.handler = handler(server)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        listener.close()


@asynccontextmanager
async def client(
    *, read_timeout: float = 300.0, keepalive: float = 4.0
) -> AsyncIterator[H1Upstream]:
    upstream = H1Upstream(read_timeout=read_timeout, keepalive=keepalive)
    await upstream.start()
    try:
        yield upstream
    finally:
        await upstream.close()


def answer(body: bytes = JSON, *, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
        % (extra, len(body), body)
    )


def keep_answering(server: Server) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.request(reader)
            writer.write(answer())
            await writer.drain()

    return handle


async def read_all(upstream: H1Upstream, url: str) -> bytes:
    async with upstream.post(url, b"{}", HEADERS) as r:
        if r.is_stream:
            return b"".join([chunk async for chunk in r])
        return await r.read()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_the_request_on_the_wire_and_keep_alive_reuse() -> None:
    async with serving(keep_answering) as server, client() as upstream:
        for _ in range(3):
            headers = {**HEADERS, "x-request-id": "r1"}
            async with upstream.post(server.url + "/v1/chat?x=1", b'{"a":1}', headers) as r:
                assert r.status == 200
                assert not r.is_stream
                assert ("Content-Type", "application/json") in list(r.header_items())
                assert await r.read() == JSON
        assert server.connections == 1
        host = server.url.removeprefix("http://").encode()
        assert server.requests[0] == (
            b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: %s\r\ncontent-type: application/json\r\n"
            b"accept-encoding: identity\r\nx-request-id: r1\r\nContent-Length: 7\r\n\r\n"
            b'{"a":1}' % host
        )


def test_the_pool_keeps_aiohttps_keep_alive_and_limit() -> None:
    upstream = H1Upstream()
    assert upstream.keepalive == KEEPALIVE_SECONDS
    assert upstream._limit == POOL_LIMIT


async def test_past_the_limit_a_request_waits_for_a_connection() -> None:
    upstream = H1Upstream(limit=1)
    await upstream.start()
    try:
        async with serving(keep_answering) as server:
            first = upstream.post(server.url + "/v1/x", b"{}", HEADERS)
            response = await first.__aenter__()
            second = asyncio.ensure_future(read_all(upstream, server.url + "/v1/x"))
            await until(lambda: len(upstream._waiting) == 1)  # the one connection is in use
            assert not second.done()
            assert await response.read() == JSON
            await first.__aexit__(None, None, None)
            assert await asyncio.wait_for(second, 5.0) == JSON
            assert server.connections == 1
    finally:
        await upstream.close()


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    def once(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.request(reader)
            writer.write(answer())
            await writer.drain()  # then closed, idle, with no Connection: close said

        return handle

    async with serving(once) as server, client() as upstream:
        async with upstream.post(server.url + "/v1/x", b"{}", HEADERS) as r:
            assert await r.read() == JSON
        pooled = upstream._idle[("127.0.0.1", int(server.url.rsplit(":", 1)[1]))]
        await until(lambda: pooled[0].closed)
        async with upstream.post(server.url + "/v1/x", b"{}", HEADERS) as r:
            assert await r.read() == JSON
        assert server.connections == 2


async def test_idle_connections_past_the_keep_alive_are_closed() -> None:
    async with serving(keep_answering) as server, client(keepalive=0.2) as upstream:
        async with upstream.post(server.url + "/v1/x", b"{}", HEADERS) as r:
            await r.read()
        await until(lambda: not any(upstream._idle.values()))  # the sweep, every 0.1 s
        async with upstream.post(server.url + "/v1/x", b"{}", HEADERS) as r:
            await r.read()
        assert server.connections == 2


async def test_connection_close_and_an_answer_not_read_to_its_end_are_not_reused() -> None:
    def handler(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await server.request(reader)
                if len(server.requests) == 1:
                    writer.write(answer(extra=b"Connection: close\r\n"))
                elif len(server.requests) == 2:
                    writer.write(answer(b"x" * 100)[:-60])  # 40 of 100 bytes: read no further
                else:
                    writer.write(answer())
                await writer.drain()

        return handle

    async with serving(handler) as server, client() as upstream:
        async with upstream.post(server.url + "/v1/x", b"{}", HEADERS) as r:
            assert await r.read() == JSON
        async with upstream.post(server.url + "/v1/x", b"{}", HEADERS) as r:
            assert r.status == 200  # left before its body came
        async with upstream.post(server.url + "/v1/x", b"{}", HEADERS) as r:
            assert await r.read() == JSON
        assert server.connections == 3


async def test_a_chunked_stream_comes_chunk_by_chunk_as_it_is_sent() -> None:
    go_on = asyncio.Event()

    def handler(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
                b"d\r\ndata: first\n\n\r\n"
            )
            await go_on.wait()
            writer.write(b"e\r\ndata: second\n\n\r\n0\r\n\r\n")
            await writer.drain()
            await reader.read()

        return handle

    async with (
        serving(handler) as server,
        client() as upstream,
        upstream.post(server.url + "/v1/x", b"{}", HEADERS) as r,
    ):
        assert r.is_stream
        chunks = aiter(r)
        assert await anext(chunks) == b"data: first\n\n"
        go_on.set()
        assert [chunk async for chunk in chunks] == [b"data: second\n\n"]


async def test_a_body_ending_where_the_connection_does() -> None:
    def handler(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")

        return handle

    async with (
        serving(handler) as server,
        client() as upstream,
        upstream.post(server.url + "/v1/x", b"{}", HEADERS) as r,
    ):
        assert await r.read() == b"all of it"


@pytest.mark.parametrize("when", ["before the answer", "mid-body", "mid-stream"])
async def test_a_server_dying_is_an_upstream_error(when: str) -> None:
    def handler(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.request(reader)
            if when == "mid-body":
                writer.write(answer(b"x" * 100)[:-50])
            elif when == "mid-stream":
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                )
            await writer.drain()
            writer.transport.abort()

        return handle

    async with serving(handler) as server, client() as upstream:
        with pytest.raises(UpstreamError, match="ServerDisconnected"):
            await read_all(upstream, server.url + "/v1/x")
        assert not any(upstream._idle.values())


async def test_a_refused_connection_is_an_upstream_error() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    async with client() as upstream:
        with pytest.raises(UpstreamError, match="ClientConnectorError"):
            async with upstream.post(f"http://127.0.0.1:{port}/v1/x", b"{}", HEADERS):
                pass


@pytest.mark.parametrize("when", ["before the head", "mid-body"])
async def test_silence_past_the_read_timeout_is_a_timeout(when: str) -> None:
    def handler(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.request(reader)
            if when == "mid-body":
                writer.write(answer(b"x" * 100)[:-50])
            await reader.read()  # and says nothing more

        return handle

    async with serving(handler) as server, client(read_timeout=0.3) as upstream:
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            async with upstream.post(server.url + "/v1/x", b"{}", HEADERS) as r:
                await r.read()
        assert 0.25 < asyncio.get_running_loop().time() - started < 5.0


async def test_a_stream_that_keeps_flowing_outlives_the_read_timeout() -> None:
    def handler(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for _ in range(8):
                await asyncio.sleep(0.1)
                writer.write(b"2\r\nok\r\n")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            await reader.read()

        return handle

    async with (
        serving(handler) as server,
        client(read_timeout=0.3) as upstream,
        upstream.post(server.url + "/v1/x", b"{}", HEADERS) as r,
    ):
        assert b"".join([chunk async for chunk in r]) == b"ok" * 8


async def test_a_slow_reader_pauses_the_socket_and_loses_nothing() -> None:
    piece = bytes(range(256)) * 256  # 64 KiB
    pieces = 256  # 16 MiB in all
    sent = 0

    def handler(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal sent
            await server.request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for _ in range(pieces):
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                sent += 1
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            await reader.read()

        return handle

    async with (
        serving(handler) as server,
        client() as upstream,
        upstream.post(server.url + "/v1/x", b"{}", HEADERS) as r,
    ):
        chunks = aiter(r)
        received = await anext(chunks)
        await asyncio.sleep(0.3)  # the relay's client is slow: reading stops
        connection = cast(_Connection, r)
        assert connection._paused
        assert connection._buffered <= _HIGH_WATER + 256 * 1024  # one read past the mark at most
        assert sent < pieces  # the server is held back, not buffered for whole
        received += b"".join([chunk async for chunk in chunks])
        assert received == piece * pieces


async def test_a_large_whole_answer_is_read_whole() -> None:
    body = bytes(range(256)) * 4096 * 4  # 4 MiB, past the mark where a stream would pause

    def handler(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.request(reader)
            writer.write(answer(body))
            await writer.drain()
            await reader.read()

        return handle

    async with serving(handler) as server, client(read_timeout=5.0) as upstream:
        assert await read_all(upstream, server.url + "/v1/x") == body


@pytest.mark.parametrize(
    "url", ["https://models.example/v1/x", "http://user:pw@models.example/v1/x"]
)
async def test_https_and_urls_with_credentials_go_through_aiohttp(url: str) -> None:
    async with client() as upstream:
        for _ in range(2):  # worked out, then remembered
            exchange = upstream.post(url, b"{}", HEADERS)  # not entered: nothing is sent
            assert type(exchange).__name__ == "_AiohttpExchange"
            exchange._request.close()  # type: ignore[attr-defined]  # its coroutine, unawaited
        plain = upstream.post("http://models.example/v1/x", b"{}", HEADERS)
        assert type(plain).__name__ == "_Exchange"


@pytest.mark.parametrize("shape", ["many headers", "one endless value"])
async def test_an_answer_head_past_its_bound_is_an_upstream_error(shape: str) -> None:
    sent: list[int] = []

    def endless_head(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\n" + (b"X-Long: " if shape != "many headers" else b""))
            line = b"X-Filler: %s\r\n" % (b"f" * 1000) if shape == "many headers" else b"v" * 1000
            total = 0
            while total < 4 * MAX_HEAD:  # bounded: the client gives up well before
                writer.write(line)
                total += len(line)
                sent.append(total)
                await writer.drain()
            await asyncio.Event().wait()  # the client must not wait for more

        return handle

    async with serving(endless_head) as server, client(read_timeout=30) as upstream:
        with pytest.raises(UpstreamError, match="head is too large"):
            async with asyncio.timeout(10):
                await read_all(upstream, server.url)
    assert sent[-1] > MAX_HEAD  # the server did send past the bound


async def test_a_head_just_under_the_bound_with_a_body_in_the_same_read_is_read() -> None:
    body = b"b" * (3 * MAX_HEAD)  # a body far larger than the bound, sent with the head

    def big_head(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.request(reader)
            filler = b"X-Filler: %s\r\n" % (b"f" * (MAX_HEAD - 200))
            writer.write(answer(body, extra=filler))
            await writer.drain()

        return handle

    async with serving(big_head) as server, client() as upstream:
        assert await read_all(upstream, server.url) == body
