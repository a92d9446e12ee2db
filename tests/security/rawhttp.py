"""Raw-socket HTTP for hostile requests no well-behaved client would send."""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

_FILLER = b"a" * (1 << 20)


def _pieces(prefix: bytes, filler: int, suffix: bytes) -> Iterator[bytes]:
    yield prefix
    while filler > 0:
        piece = _FILLER[: min(filler, len(_FILLER))]
        filler -= len(piece)
        yield piece
    yield suffix


def exchange(
    port: int, prefix: bytes, filler: int = 0, suffix: bytes = b"", *, timeout: float = 120.0
) -> bytes:
    """Send ``prefix``, ``filler`` bytes of ``a``, then ``suffix``, reading all the while; return
    what the server answered by the time it closed the connection (or ``timeout`` passed).

    The server may answer and close before it has read everything: that is the point."""
    pieces = _pieces(prefix, filler, suffix)
    pending = memoryview(b"")
    sending = True
    answer = bytearray()
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setblocking(False)
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while time.monotonic() < deadline:
                wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if sending else 0)
                selector.modify(sock, wanted)
                for _key, events in selector.select(timeout=1.0):
                    if events & selectors.EVENT_READ:
                        try:
                            data = sock.recv(65536)
                        except ConnectionResetError:
                            return bytes(answer)
                        if not data:
                            return bytes(answer)
                        answer += data
                    if sending and events & selectors.EVENT_WRITE:
                        if not pending:
                            pending = memoryview(next(pieces, b""))
                            if not pending:
                                sending = False
                                continue
                        try:
                            pending = pending[sock.send(pending) :]
                        except (BrokenPipeError, ConnectionResetError):
                            sending = False
    return bytes(answer)


def peak_rss_bytes(pid: int) -> int:
    """The peak resident set size of process ``pid`` (Linux ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP answer."""
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])
