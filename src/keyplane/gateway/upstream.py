"""The gateway's one seam to the model servers: the ``Upstream`` protocol, and its aiohttp
implementation, the default.

As httpx has one transport under its client, the relay reaches upstreams only through
``Upstream.post``: a test drives the gateway with a fake upstream and no socket, and another
client could replace aiohttp without touching the relay. An implementation raises
``TimeoutError`` when the upstream stays silent past its bound, and ``UpstreamError`` for any other
failure of the exchange, before or during the answer; the relay decides what the client sees.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol, TypeVar

import aiohttp

__all__ = ["AiohttpUpstream", "Upstream", "UpstreamError", "UpstreamResponse"]

_T = TypeVar("_T")


class UpstreamError(Exception):
    """The upstream could not be reached, or broke off its answer."""


class UpstreamResponse(Protocol):
    """An upstream's answer, its head read, its body still to come."""

    status: int
    #: ``text/event-stream``: relayed chunk by chunk as it arrives, else read whole.
    is_stream: bool

    @property
    def ended(self) -> bool:
        """The body has been read to its end: iterating further would stop (False while not
        known; the relay then sends the answer's end on its own)."""
        ...

    def header_items(self) -> Iterable[tuple[str, str]]:
        """The response's headers as they came (hop-by-hop ones too: the relay drops those)."""
        ...

    async def read(self) -> bytes:
        """The whole body."""
        ...

    def __aiter__(self) -> AsyncIterator[bytes]:
        """The body in chunks as they arrive (not aligned to events)."""
        ...


class Upstream(Protocol):
    """Where the gateway sends what it admits: ``post`` opens one exchange."""

    async def start(self) -> None:
        """Called once the event loop runs, before the first ``post``."""
        ...

    async def close(self) -> None: ...

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        """POST ``body`` to ``url``; the context is the exchange (leaving it releases it)."""
        ...


#: How long an idle pooled connection to a model server is kept. Below the keep-alive of the
#: servers in front of most models (uvicorn's, so vLLM's and keyplane's own: 5 s), so the pool
#: drops a connection before the server does: with 60 s, a request sent on a connection the
#: server was closing that instant failed as a 502 (ClientOSError) after any pause in traffic.
KEEPALIVE_SECONDS = 4.0


#: How many connections to the model servers may be in use at once (idle ones not counted).
POOL_LIMIT = 1024


class AiohttpUpstream:
    """Upstreams through one pooled aiohttp session (measured 10-20x cheaper per request than an
    httpx client here). ``read_timeout`` bounds silence, not a whole answer: a long stream may
    run as long as it flows."""

    def __init__(self, *, read_timeout: float = 300.0, connect_timeout: float = 5.0) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=POOL_LIMIT, keepalive_timeout=KEEPALIVE_SECONDS, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, auto_decompress=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> _AiohttpExchange:
        assert self._session is not None, "AiohttpUpstream.start() was not awaited"
        return _AiohttpExchange(self._session.post(url, data=body, headers=headers))


class _AiohttpExchange:
    """aiohttp's request context, its client errors told as ``UpstreamError``."""

    __slots__ = ("_request",)

    def __init__(self, request: AbstractAsyncContextManager[aiohttp.ClientResponse]) -> None:
        self._request = request

    async def __aenter__(self) -> _AiohttpResponse:
        return _AiohttpResponse(await _told(self._request.__aenter__()))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._request.__aexit__(exc_type, exc, tb)


class _AiohttpResponse:
    __slots__ = ("_chunks", "_response", "is_stream", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._chunks = response.content.iter_any()
        self.status = response.status
        self.is_stream = response.content_type == "text/event-stream"

    @property
    def ended(self) -> bool:
        return self._response.content.at_eof()

    def header_items(self) -> Iterable[tuple[str, str]]:
        return self._response.headers.items()

    async def read(self) -> bytes:
        return await _told(self._response.read())

    def __aiter__(self) -> _AiohttpResponse:
        return self

    async def __anext__(self) -> bytes:
        return await _told(self._chunks.__anext__())


async def _told(step: Awaitable[_T]) -> _T:
    """``step``'s result, aiohttp's client errors raised as ``UpstreamError``."""
    try:
        return await step
    except TimeoutError:
        raise  # aiohttp's timeouts are client errors too: silence is told apart
    except aiohttp.ClientError as error:
        raise UpstreamError(type(error).__name__) from error
