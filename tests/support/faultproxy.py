"""A loopback HTTP/1.1 proxy that misbehaves on cue, for testing clients' retries.

Each request the proxy receives takes the next action of its plan (``forward`` once the plan is
used up):

- ``forward``: send the request upstream and relay the answer;
- ``drop``: send the request upstream, read the whole answer (so the server has acted on it), then
  close the client's connection without a byte: the client sees a dropped connection;
- an ``int`` status (``503``): answer it at once with a contract error envelope, forwarding
  nothing.

One request per connection (``Connection: close`` both ways), a thread per connection.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

Action = str | int

_STATUS_CODES = {429: "resource-exhausted", 502: "unavailable", 503: "unavailable"}


def _read_request(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > 1 << 20:
            return None
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    lines = head.split(b"\r\n")
    kept = [lines[0]]
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        if name.strip().lower() == b"connection":
            continue
        kept.append(line)
    kept.append(b"Connection: close")
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


def _exchange(upstream: tuple[str, int], request: bytes) -> bytes:
    with socket.create_connection(upstream, timeout=10.0) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _canned(status: int, retry_after: float | None) -> bytes:
    body = json.dumps(
        {"code": _STATUS_CODES.get(status, "internal"), "error": f"injected {status}"}
    ).encode()
    headers = [
        f"HTTP/1.1 {status} Injected",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        headers.append(f"Retry-After: {retry_after:g}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    plan: list[Action] = field(default_factory=list)
    #: Retry-After on injected answers (seconds), or None for none.
    retry_after: float | None = None
    #: Every action taken, in order.
    taken: list[Action] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(32)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _next(self) -> Action:
        with self._lock:
            action = self.plan.pop(0) if self.plan else "forward"
            self.taken.append(action)
            return action

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            worker = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(worker)
            worker.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10.0)
            request = _read_request(conn)
            if request is None:
                return
            action = self._next()
            if isinstance(action, int):
                conn.sendall(_canned(action, self.retry_after))
                return
            answer = _exchange(self.upstream, request)
            if action == "drop":
                # Reset rather than close: no FIN that could pass for an empty answer.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            conn.sendall(answer)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._acceptor.join(timeout=5)
        for worker in self._threads:
            worker.join(timeout=10)


@contextlib.contextmanager
def fault_proxy(
    upstream_url: str, plan: list[Action] | None = None, *, retry_after: float | None = None
) -> Iterator[FaultProxy]:
    host, _, port = upstream_url.removeprefix("http://").partition(":")
    proxy = FaultProxy((host, int(port)), list(plan or ()), retry_after)
    try:
        yield proxy
    finally:
        proxy.close()
