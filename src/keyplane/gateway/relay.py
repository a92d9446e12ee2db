"""Forwarding an admitted request upstream and its answer back, as it comes.

Bodies go upstream untouched, but for one change: a stream whose client did not ask for usage is
asked for it (``upstream_body``), and the extra usage chunk is dropped on the way back, so ``tpm``
is charged the real count while the client sees exactly what it asked for. A whole answer is sent
with its length; a stream is relayed event by event. A client that goes away cancels the upstream
exchange; an upstream that fails before answering is a 502 (504 if it stayed silent), one that
fails mid-answer leaves the client a truncated stream. What it all costs is
``keyplane.gateway.accounting``'s; the upstream is reached only through ``Upstream``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import structlog

from keyplane.asgi import DisconnectWatch, Receive, Scope, Send
from keyplane.gateway.accounting import Account
from keyplane.gateway.http import UpstreamTimeout, UpstreamUnreachable
from keyplane.gateway.upstream import Upstream, UpstreamError, UpstreamResponse

__all__ = ["Relay", "upstream_body", "upstream_headers"]

log = structlog.get_logger("keyplane.gateway")

#: Streams whose usage comes only when asked for with stream_options.include_usage.
_USAGE_ON_REQUEST = frozenset({"/v1/chat/completions", "/v1/completions"})
_FORWARDED_HEADERS = (b"accept", b"openai-organization", b"openai-project", b"x-request-id")
_TEST_HEADER_PREFIX = b"x-keyplane-"
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "date",
        "server",
    }
)
_top_level = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _events_end(buffer: bytes) -> int:
    """Where the last whole event in ``buffer`` ends (0: none), events split at each blank line
    ("\\n\\n") from the start."""
    end = buffer.rfind(b"\n\n")
    if end < 0:
        return 0
    if end == 0 or buffer[end - 1] != 0x0A:
        return end + 2
    # A run of newlines: the split from the start may end one byte earlier than rfind says.
    at = 0
    while (found := buffer.find(b"\n\n", at)) >= 0:
        at = found + 2
    return at


def upstream_body(
    path: str, body: bytes, stream: bool | None, stream_options: dict[str, Any] | None
) -> tuple[bytes, bool]:
    """The body to send upstream, and whether the stream's usage chunk is ours to drop."""
    if not stream or path not in _USAGE_ON_REQUEST:
        return body, False
    options = stream_options or {}
    if options.get("include_usage"):
        return body, False
    # Top-level fields only, the rest passed through as it came: no number the client sent is
    # re-read (msgspec refuses integers past 64 bits).
    document = _top_level.decode(body)
    document["stream_options"] = msgspec.Raw(
        msgspec.json.encode({**options, "include_usage": True})
    )
    return msgspec.json.encode(document), True


def upstream_headers(
    scope: Scope, *, test_headers: bool, authorization: str | None
) -> dict[str, str]:
    """The headers sent upstream: ours, the few of the client's an upstream may use, and the
    model's own upstream credential."""
    headers = {"content-type": "application/json", "accept-encoding": "identity"}
    # keyplane's own headers (the model server's test knobs among them) are the project's, not a
    # client's to send upstream, unless a test deployment asks for them.
    for name, value in scope["headers"]:
        if name in _FORWARDED_HEADERS or (test_headers and name.startswith(_TEST_HEADER_PREFIX)):
            headers[name.decode()] = bytes(value).decode("latin-1")
    if authorization:
        headers["authorization"] = authorization
    return headers


class Relay:
    """One forwarded request: sends it upstream, relays the answer to the client."""

    __slots__ = (
        "_buffer",
        "_headers",
        "_status",
        "_task",
        "account",
        "client_gone",
        "extra_headers",
        "send",
        "started",
        "strip_usage",
    )

    def __init__(
        self,
        send: Send,
        account: Account,
        *,
        strip_usage: bool,
        extra_headers: Sequence[tuple[bytes, bytes]],
    ) -> None:
        self.send = send
        self.account = account
        self.strip_usage = strip_usage
        self.extra_headers = extra_headers
        self.started = False
        self.client_gone = False
        self._buffer = b""
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._task: asyncio.Task[Any] | None = None

    async def run(
        self,
        upstream: Upstream,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        receive: Receive,
        disconnects: DisconnectWatch | None = None,
    ) -> None:
        """Forward, relay, and charge: cancelled (and charged what was sent) if the client goes.

        ``disconnects``: the server's ``DisconnectWatch`` if it offers one (keyplane's does);
        without it a watcher task waits in ``receive()`` for ``http.disconnect``.
        """
        # The relay runs in this task; the server's callback, or one watcher task, cancels it if
        # the client goes away (no task at all where the server calls back: this is the hot path).
        this = asyncio.current_task()
        assert this is not None
        self._task = this
        watcher = None
        if disconnects is not None:
            disconnects.add(self._client_went)
        else:
            watcher = this.get_loop().create_task(self._cancel_on_disconnect(receive, this))
        try:
            await self._exchange(upstream, url, body, headers)
        except asyncio.CancelledError:
            if not self.client_gone:
                raise
            this.uncancel()  # ours, not the server's: the request ends normally
        finally:
            if watcher is None:
                assert disconnects is not None
                disconnects.discard(self._client_went)
            else:
                watcher.cancel()
            await self.account.settle()  # a no-op if the answer's end already charged it

    def _client_went(self) -> None:
        """The server's word that the client's connection is lost: stop the upstream exchange."""
        if not self.client_gone and self._task is not None:
            self.client_gone = True
            self._task.cancel()

    async def _cancel_on_disconnect(self, receive: Receive, relay: asyncio.Task[Any]) -> None:
        """Stop the upstream exchange (cancel ``relay``) when the client goes away."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                relay.cancel()
                return

    async def _exchange(
        self, upstream: Upstream, url: str, body: bytes, headers: Mapping[str, str]
    ) -> None:
        try:
            async with upstream.post(url, body, headers) as response:
                self._start(response)
                if response.is_stream:
                    async for chunk in response:
                        if response.ended:  # the answer's last bytes: sent with its end
                            await self._stream_chunk(chunk, last=True)
                            break
                        await self._stream_chunk(chunk)
                    else:
                        await self._stream_end()
                else:
                    data = await response.read()
                    await self._whole(data, ok=response.status < 400)
        except TimeoutError:
            if self.started:
                return
            raise UpstreamTimeout("The model server did not answer in time.") from None
        except UpstreamError as error:
            if self.started:
                return  # mid-response failure: the client sees a truncated stream
            log.warning("upstream_error", url=url, error=str(error))
            raise UpstreamUnreachable("The model server is unavailable.") from None

    def _start(self, response: UpstreamResponse) -> None:
        headers = []
        for k, v in response.header_items():
            name = k.lower()
            if name not in _HOP_BY_HOP:
                headers.append((name.encode(), v.encode("latin-1")))
        headers += self.extra_headers
        self._status = response.status
        self._headers = headers

    async def _whole(self, data: bytes, *, ok: bool) -> None:
        account = self.account
        if ok:
            account.read_whole(data)
        await account.settle()
        await self.send(
            {
                "type": "http.response.start",
                "status": self._status,
                "headers": [*self._headers, (b"content-length", str(len(data)).encode())],
            }
        )
        self.started = True
        account.ending(self._status)  # metered before the body goes out
        await self.send({"type": "http.response.body", "body": data})

    async def _send_head(self) -> None:
        self.account.started(self._status)
        await self.send(
            {"type": "http.response.start", "status": self._status, "headers": self._headers}
        )
        self.started = True

    async def _stream_chunk(self, chunk: bytes, *, last: bool = False) -> None:
        """Relay the whole events ``chunk`` completes in one send (the rest waits for more);
        ``last``: the answer ends with it, so its end goes out in the same send."""
        if not self.started:
            await self._send_head()
        buffer = self._buffer + chunk if self._buffer else chunk
        cut = _events_end(buffer)
        events, self._buffer = buffer[:cut], buffer[cut:]
        account = self.account
        if b'"usage"' in events:
            events, sent = self._scan(events)
        else:
            sent = events.count(b"\n\n")
        account.events_sent += sent
        if account.final_usage or last:
            await account.settle()  # before the client can see the end of the answer
        if last:
            events, self._buffer = events + self._buffer, b""
            account.ending(self._status)
            await self.send({"type": "http.response.body", "body": events, "more_body": False})
        elif events:
            await self.send({"type": "http.response.body", "body": events, "more_body": True})

    def _scan(self, events: bytes) -> tuple[bytes, int]:
        """``events`` (whole events) as relayed, and how many: each event that carries usage is
        read, and the usage chunk only we asked for is dropped. Only the events with a
        ``"usage"`` that is not ``null`` are cut out and read (OpenAI's chunks all have one)."""
        account, strip = self.account, self.strip_usage
        if b"\n\n\n" in events:  # blank lines in a row: split as they come, one by one
            out = []
            while events:
                end = events.find(b"\n\n") + 2
                event, events = events[:end], events[end:]
                if not (account.read_event(event) and strip):
                    out.append(event)
            return b"".join(out), len(out)
        sent = events.count(b"\n\n")
        kept: list[bytes] = []
        start = 0
        at = events.find(b'"usage"')
        while at >= 0:
            if events.startswith(b":null", at + 7):
                at = events.find(b'"usage"', at + 12)
                continue
            begin = events.rfind(b"\n\n", 0, at)
            begin = begin + 2 if begin >= 0 else 0
            end = events.find(b"\n\n", at) + 2
            if account.read_event(events[begin:end]) and strip:
                kept.append(events[start:begin])  # all but the usage chunk only we asked for
                start = end
                sent -= 1
            at = events.find(b'"usage"', end)
        if start == 0:
            return events, sent
        kept.append(events[start:])
        return b"".join(kept), sent

    async def _stream_end(self) -> None:
        await self.account.settle()  # before the last bytes: the answer's end is charged, metered
        if not self.started:
            await self._send_head()
        self.account.ending(self._status)
        await self.send({"type": "http.response.body", "body": self._buffer, "more_body": False})
        self._buffer = b""
