"""Bounded request heads for every keyplane server (control plane, gateways, model server).

uvicorn's httptools protocol buffers a request line and each header value whole, by repeated
concatenation, before the application sees anything: a 200 MB ``Authorization`` header cost a
gateway 48 s and 700 MB. :func:`bounded_protocol` returns the same protocol with two caps — the
bytes of the request line plus headers, and the number of headers — checked as data arrives, and
answered ``431`` with ``connection: close`` before another byte is read.
"""

from __future__ import annotations

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_MAX_HEAD_BYTES = 64 * 1024
DEFAULT_MAX_HEADERS = 100

_BODY_431 = b'{"code":"invalid-argument","error":"Request line and headers are too large."}'
_RESPONSE_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_BODY_431)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _BODY_431
)


class _HeadTooLarge(Exception):
    """Raised from a parser callback; httptools stops parsing and re-raises it wrapped."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head over ``max_head_bytes`` bytes or
    ``max_headers`` headers with a 431."""

    max_head_bytes = DEFAULT_MAX_HEAD_BYTES
    max_headers = DEFAULT_MAX_HEADERS

    # Bytes seen since the current head began; whether a body is being read (between the end of
    # a head and the end of its message); whether a message ended in the chunk being fed.
    _head_bytes = 0
    _in_body = False
    _message_ended = False

    def data_received(self, data: bytes) -> None:
        """uvicorn's ``data_received``, counting the bytes of an unfinished head."""
        self._message_ended = False
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
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._message_ended = True
        super().on_message_complete()

    def _refuse(self) -> None:
        if self.logger.isEnabledFor(10):
            self.logger.debug("Request head too large; answered 431.")
        self.transport.write(_RESPONSE_431)
        self.transport.close()


def bounded_protocol(
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES, max_headers: int = DEFAULT_MAX_HEADERS
) -> type[BoundedHttpToolsProtocol]:
    """The protocol class to hand uvicorn as ``http=``, with these caps."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"max_head_bytes": max_head_bytes, "max_headers": max_headers},
    )
