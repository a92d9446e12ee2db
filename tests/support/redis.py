"""A throwaway ``redis-server`` for tests, beside ``tests.support.postgres``.

It listens on 127.0.0.1 only, persists nothing and lives in a temporary directory. A missing
binary fails the run (KEYPLANE_TEST_ALLOW_MISSING_REDIS=1: skip).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from tests.support.procs import free_port, missing_server

ALLOW_MISSING_ENV = "KEYPLANE_TEST_ALLOW_MISSING_REDIS"
SHARED_PORT_ENV = "KEYPLANE_TEST_REDIS_PORT"
"""The port of a ``redis-server`` already running on 127.0.0.1 for the whole run (scripts/mutants
starts one), used by :func:`shared_redis` instead of a server of its own."""


def require_redis_server() -> str:
    """The path of ``redis-server``; fail (or skip, if allowed by env) when it is missing."""
    path = shutil.which("redis-server")
    if path is None:
        missing_server("redis-server", "redis-server", ALLOW_MISSING_ENV)
    return path


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process; :meth:`start` again after :meth:`stop` reuses the port."""

    def __init__(self, executable: str, port: int | None = None) -> None:
        self.executable = executable
        self.port = port if port is not None else free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="keyplane-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, deadline: float = 10.0) -> None:
        assert self._proc is None, "already running"
        self._proc = subprocess.Popen(
            [
                self.executable,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self._dir),
                "--daemonize", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        until = time.monotonic() + deadline
        while not _answers_ping(self.port):
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            if time.monotonic() > until:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING within {deadline} s")
            time.sleep(0.01)  # polling a condition with a deadline, not papering over a race

    def pause(self) -> None:
        """SIGSTOP: Redis hangs (connections open, no replies) until :meth:`resume`."""
        assert self._proc is not None, "not running"
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None, "not running"
        os.kill(self._proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()  # SIGKILL: everything Redis held is lost (it persists nothing)
        proc.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """``server`` stopped (SIGSTOP: connections open, no replies) for the block, continued after
    it whatever happens in it."""
    server.pause()
    try:
        yield
    finally:
        server.resume()


@contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A started ``redis-server`` for the block (a module fixture's body)."""
    server = RedisServer(require_redis_server())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.close()


@contextmanager
def shared_redis() -> Iterator[RedisServer]:
    """A running ``redis-server`` for tests that only touch keys under their own prefix: the one
    on ``KEYPLANE_TEST_REDIS_PORT`` if set (left running), else one started for the block."""
    port = os.environ.get(SHARED_PORT_ENV)
    if not port:
        with running_redis() as server:
            yield server
        return
    server = RedisServer(require_redis_server(), int(port))
    try:
        yield server
    finally:
        server.close()  # not started here: stop() leaves it running, close() drops the temp dir


def unpacked(value: bytes | str | None, count: int) -> list[int]:
    """The ``count`` MessagePack integers a rate-limit key's value holds one after the other (the
    limiter's layout v2): a log entry's µs and units, or a sum's total, length, oldest entry (µs,
    units) and newest (µs, units); ``[]`` for a missing key."""
    if value is None:
        return []
    raw = value.encode() if isinstance(value, str) else value
    return msgspec.msgpack.decode(bytes((0x90 | count,)) + raw, type=list[int])


def counted(value: bytes | str | None) -> int:
    """The total a rate-limit counter's sum key holds (0 when it is missing)."""
    return (unpacked(value, 6) or [0])[0]
