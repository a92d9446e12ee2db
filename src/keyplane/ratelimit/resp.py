"""``RespClient``: the Redis limiter's own client, one pipelined RESP2 connection on an asyncio
protocol, replies parsed by hiredis.

redis-py's asyncio client takes a pooled connection, builds its command through layers of
wrappers, arms a timeout, reads the answer and gives the connection back for every call: at the
limiter's one ``EVALSHA`` per event-loop turn that machinery was most of the Redis limiter's
client CPU per decision. Here a call is one ``hiredis.pack_command`` and one ``transport.write``
on the one connection, and the answer is hiredis's ``Reader`` fed by ``data_received``, settling
the call's future in the order the calls were written (Redis answers a connection in order).
``RedisLimiter.from_url`` uses it for ``redis://host:port/db`` URLs (user and password in them
included); ``rediss://``, ``unix://`` and URLs with options in their query still go through
redis-py, as ``H1Upstream`` leaves ``https://`` to aiohttp.

What it keeps of from_url's redis-py client (a ``BlockingConnectionPool`` with the decisions'
timeout on its sockets, ``Retry`` once on a broken connection):

* each call has a deadline — the timeout it is made with, or by default the client's
  ``timeout``, or a replay's patience while :data:`PATIENCE` is set — past which its future fails
  with ``TimeoutError``; once every call on the wire is past its deadline unanswered the
  connection is closed, as a socket timeout would (a later answer has no one to go to);
* connecting is bounded by ``timeout`` too, and a refused or failed connect is a
  ``redis.exceptions.ConnectionError`` (so is an ``AUTH`` refused);
* a connection that breaks under a call (Redis restarted, the client killed) sends the call once
  more on a new connection; a second break fails it with ``ConnectionError``;
* ``NOSCRIPT`` (a Redis restarted or its scripts flushed) loads the script and runs the call again,
  as redis-py's ``Script`` does;
* error replies become redis-py's exceptions (``READONLY``, ``OOM``, ``LOADING``, ``MASTERDOWN``,
  ``NOAUTH``… as their classes, anything else a ``ResponseError`` with the whole message), so the
  limiter tells an unavailable Redis from a bug as it does with redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
import redis.exceptions

__all__ = ["PATIENCE", "RespClient", "Script"]

PATIENCE: contextvars.ContextVar[float | None] = contextvars.ContextVar("_PATIENCE", default=None)
"""While set, the deadline of the calls made without one (a replay's patience): the socket
timeout of from_url's connections, redis-py's or this client's."""

_pack = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)
"""One command's RESP bytes, in one call into hiredis (its stubs take one-item tuples only)."""

_ERRORS: dict[str, type[redis.exceptions.RedisError]] = {
    "NOSCRIPT": redis.exceptions.NoScriptError,
    "READONLY": redis.exceptions.ReadOnlyError,
    "OOM": redis.exceptions.OutOfMemoryError,
    "LOADING": redis.exceptions.BusyLoadingError,
    "MASTERDOWN": redis.exceptions.MasterDownError,
    "NOAUTH": redis.exceptions.AuthenticationError,
    "WRONGPASS": redis.exceptions.AuthenticationError,
}
"""Error codes whose replies become these classes (redis-py's), the code taken off the message."""


def _error(reply: hiredis.ReplyError) -> redis.exceptions.RedisError:
    message = str(reply)
    code, _, rest = message.partition(" ")
    cls = _ERRORS.get(code)
    if cls is None:
        if message == "ERR max number of clients reached":
            return redis.exceptions.ConnectionError(message)
        return redis.exceptions.ResponseError(message)
    return cls(rest)


class Script:
    """A Lua script of a :class:`RespClient`, run by ``EVALSHA`` (loaded on ``NOSCRIPT``).

    Called as redis-py's scripts are (``script(keys=..., args=...)``), its call's deadline is the
    client's timeout or, while set, :data:`PATIENCE`."""

    __slots__ = ("client", "load", "sha")

    def __init__(self, client: RespClient, source: str) -> None:
        self.client = client
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()  # its name
        self.load = _pack(("SCRIPT", "LOAD", source))

    def __call__(
        self, *, keys: Sequence[str | bytes], args: Sequence[int | str | bytes]
    ) -> asyncio.Future[Any]:
        return self.client.evalsha(self, keys, args, PATIENCE.get() or self.client.timeout)


class _Call:
    """One command on its way: its bytes, its future and deadline, what it may still try."""

    __slots__ = ("deadline", "future", "hello", "loads", "packed", "retried", "script", "timeout")

    def __init__(
        self,
        packed: bytes,
        future: asyncio.Future[Any],
        timeout: float,
        deadline: float,
        script: Script | None,
    ) -> None:
        self.packed = packed
        self.future = future
        self.timeout = timeout
        self.deadline = deadline
        self.script = script  # set while a NOSCRIPT may still load it and run the call again
        self.retried = False  # sent again after a broken connection: not a second time
        self.loads = False  # a SCRIPT LOAD before its call's second try: not the call's answer
        self.hello = False  # AUTH or SELECT on a new connection


class _Connection(asyncio.Protocol):
    """The connection's end: feeds hiredis and settles the calls on the wire in order."""

    def __init__(self, client: RespClient) -> None:
        self.client = client
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[_Call] = deque()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, call: _Call) -> None:
        assert self.transport is not None
        self.waiting.append(call)
        self.transport.write(call.packed)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(redis.exceptions.ConnectionError(f"Protocol error: {exc}"))
                return
            if reply is False:
                return
            if not waiting:
                self.abort(redis.exceptions.ConnectionError("an answer to no call"))
                return
            call = waiting.popleft()
            if call.hello:
                if type(reply) is hiredis.ReplyError:  # before the calls behind it are answered
                    self.refused(_error(reply))
                    return
                continue
            future = call.future
            if future.done():  # given up at its deadline, or its caller is gone
                continue
            if type(reply) is hiredis.ReplyError:
                error = _error(reply)
                script = call.script
                if type(error) is redis.exceptions.NoScriptError and script is not None:
                    call.script = None  # one load per call, as redis-py's Script
                    load = _Call(script.load, future, call.timeout, call.deadline, None)
                    load.loads = True
                    self.send(load)
                    self.send(call)
                    continue
                future.set_exception(error)  # a load that failed: the call after it is skipped
            elif not call.loads:
                future.set_result(reply)

    def refused(self, error: redis.exceptions.RedisError) -> None:
        """Redis refused the connection's AUTH or SELECT: its calls fail with that, once."""
        if not isinstance(error, redis.exceptions.ConnectionError):
            error = redis.exceptions.ConnectionError(str(error))
        for call in self.waiting:
            call.retried = True  # no second try: it would be refused the same way
        self.abort(error)

    def abort(self, error: Exception) -> None:
        """Close the connection, failing or re-sending its calls with ``error``."""
        if self.transport is not None:
            self.transport.abort()
        self.connection_lost(error)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost:
            self.client._lost(self, redis.exceptions.ConnectionError("Connection closed."))
            return
        self.lost = True
        error = (
            exc
            if exc is not None
            else redis.exceptions.ConnectionError("Connection closed by server.")
        )
        if not isinstance(error, redis.exceptions.RedisError):
            error = redis.exceptions.ConnectionError(f"{type(error).__name__}: {error}")
        self.client._lost(self, error)


class RespClient:
    """Redis at ``host:port`` (database ``db``, ``AUTH`` with ``username``/``password`` if given)
    over one pipelined connection, opened on the first call and again after it breaks."""

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float,
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.timeout = timeout
        """The deadline of calls made without one, and the bound of connecting."""
        hello: list[bytes] = []
        if password is not None:
            auth = ("AUTH", password) if username is None else ("AUTH", username, password)
            hello.append(_pack(auth))
        if db:
            hello.append(_pack(("SELECT", db)))
        self._hello = hello
        self._connection: _Connection | None = None  # open and usable
        self._connecting: asyncio.Task[None] | None = None
        self._queue: list[_Call] = []  # calls waiting for a connection
        self._timer: asyncio.TimerHandle | None = None

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    def evalsha(
        self,
        script: Script,
        keys: Sequence[str | bytes],
        args: Sequence[int | str | bytes],
        timeout: float,
    ) -> asyncio.Future[Any]:
        """Run ``script`` on ``keys`` and ``args``; the future fails past ``timeout`` seconds."""
        packed = _pack(("EVALSHA", script.sha, len(keys), *keys, *args))
        return self.execute(packed, timeout, script)

    def execute(
        self, packed: bytes, timeout: float, script: Script | None = None
    ) -> asyncio.Future[Any]:
        """Send one packed command; its future gets the reply (an error reply as its exception)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        deadline = loop.time() + timeout
        call = _Call(packed, future, timeout, deadline, script)
        connection = self._connection
        if connection is not None and not connection.lost:
            connection.send(call)
        else:
            self._queue.append(call)
            if self._connecting is None:
                self._connecting = loop.create_task(self._connect())
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._expire)
        return future

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        error: Exception | None = None
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(self.timeout):
                transport, connection = await loop.create_connection(
                    lambda: _Connection(self), self.host, self.port
                )
                connection.transport = transport  # uvloop may call connection_made later
        except TimeoutError:
            error = redis.exceptions.TimeoutError("Timeout connecting to server")
        except OSError as exc:
            error = redis.exceptions.ConnectionError(
                f"Error {exc.errno} connecting to {self.host}:{self.port}. {exc.strerror or exc}."
            )
        finally:
            self._connecting = None
        if connection is not None and connection.lost:  # closed by Redis as soon as made
            error = redis.exceptions.ConnectionError("Connection closed by server.")
        if error is not None:
            self._fail_queued(error, retry=type(error) is redis.exceptions.ConnectionError)
            return
        assert connection is not None
        for packed in self._hello:  # answered first: a refusal closes the connection
            self._handshake(connection, packed)
        self._connection = connection
        queued, self._queue = self._queue, []
        for call in queued:
            if not call.future.done():
                connection.send(call)

    def _handshake(self, connection: _Connection, packed: bytes) -> None:
        """``AUTH`` or ``SELECT`` before the calls: a refusal closes the connection."""
        future = asyncio.get_running_loop().create_future()
        future.cancel()  # nobody waits for it
        call = _Call(packed, future, self.timeout, float("inf"), None)
        call.hello = True
        connection.send(call)

    def _fail_queued(self, error: Exception, *, retry: bool) -> None:
        """The connection could not be made: its calls fail, or try once more if ``retry``."""
        queued, self._queue = self._queue, []
        again = []
        for call in queued:
            if call.future.done():
                continue
            if retry and not call.retried:
                call.retried = True
                again.append(call)
            else:
                call.future.set_exception(error)
        if again:
            self._queue = again
            self._connecting = asyncio.get_running_loop().create_task(self._connect())

    def _lost(self, connection: _Connection, error: Exception) -> None:
        """``connection`` broke (or was closed): its unanswered calls go once more, or fail."""
        if self._connection is connection:
            self._connection = None
        timed_out = isinstance(error, redis.exceptions.TimeoutError)
        again = []
        for call in connection.waiting:
            if call.future.done():
                continue
            if call.retried or timed_out:
                call.future.set_exception(error)
            else:
                call.retried = True
                again.append(call)
        connection.waiting.clear()
        if again:
            self._queue[:0] = again
            if self._connecting is None:
                loop = asyncio.get_running_loop()
                self._connecting = loop.create_task(self._connect())

    def _expire(self) -> None:
        """Fail the calls past their deadline; close a connection that answered none in time."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        soonest = float("inf")
        connection = self._connection
        waiting: Sequence[_Call] = connection.waiting if connection is not None else ()
        unanswered = False
        for calls in (waiting, self._queue):
            for call in calls:
                if call.future.done():
                    continue
                if call.deadline <= now:
                    call.future.set_exception(
                        TimeoutError(f"no answer from Redis within {call.timeout} s")
                    )
                else:
                    unanswered = True
                    soonest = min(soonest, call.deadline)
        self._queue = [call for call in self._queue if not call.future.done()]
        if connection is not None and waiting and not unanswered:
            # Silent past every deadline on it, as a socket timeout: a later answer would find
            # no one waiting, and the next call starts afresh.
            connection.abort(redis.exceptions.TimeoutError("Timeout reading from socket"))
        if soonest != float("inf"):
            self._timer = loop.call_at(soonest, self._expire)

    async def aclose(self) -> None:
        """Close the connection; calls still waiting fail with ``ConnectionError``."""
        error = redis.exceptions.ConnectionError("the client was closed")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
        connection, self._connection = self._connection, None
        if connection is not None:
            for call in connection.waiting:
                call.retried = True
            connection.abort(error)
        for call in self._queue:
            if not call.future.done():
                call.future.set_exception(error)
        self._queue = []
