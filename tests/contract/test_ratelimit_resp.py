"""The Redis limiter's own client (``keyplane.ratelimit.resp``) on real redis-servers: what
``from_url``'s redis-py client did and the limiter relies on — ``AUTH`` and ``SELECT`` from the
URL, a script flushed from Redis loaded again, each call's deadline, a connection silent past
every deadline closed and the next call on a new one, a broken protocol a ``ConnectionError``, and
error replies as redis-py's exception classes."""

from __future__ import annotations

import asyncio
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, suppress

import hiredis
import pytest
import redis.exceptions
from redis.asyncio import Redis

from keyplane.ratelimit import FailurePolicy, RedisLimiter
from keyplane.ratelimit.resp import RespClient, _error, _pack
from tests.contract.test_ratelimit_failover import settings
from tests.contract.test_ratelimit_failover_edges import admin as admin_of
from tests.support.limits import qpm
from tests.support.procs import free_port
from tests.support.redis import RedisServer, counted, paused


@asynccontextmanager
async def client_at(port: int, timeout: float = 5.0) -> AsyncIterator[RespClient]:
    client = RespClient("127.0.0.1", port, timeout=timeout)
    try:
        yield client
    finally:
        await client.aclose()


def client_of(server: RedisServer) -> AbstractAsyncContextManager[RespClient]:
    return client_at(server.port)


async def ping(client: RespClient, timeout: float = 5.0) -> object:
    return await client.execute(hiredis.pack_command(("PING",)), timeout)


async def test_the_urls_password_user_and_database_are_used(server: RedisServer) -> None:
    admin = Redis.from_url(server.url)
    try:
        await admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", "limiter", "on", ">s3cr:t", "~*", "+@all"
        )
        await admin.config_set("requirepass", "p@ss")
        await admin.execute_command("AUTH", "p@ss")  # type: ignore[no-untyped-call]
        url = f"redis://limiter:s3cr%3At@127.0.0.1:{server.port}/3"
        for given in (url, f"redis://:p%40ss@127.0.0.1:{server.port}/3"):
            prefix = f"test:{uuid.uuid4().hex}:"
            limiter = RedisLimiter.from_url(given, settings(FailurePolicy.DENY, prefix))
            try:
                assert isinstance(limiter._client, RespClient)
                decision = await limiter.acquire([qpm(10)])
                assert (decision.allowed, decision.degraded) == (True, False)
            finally:
                await limiter.aclose()
            await admin.select(3)
            assert counted(await admin.get(prefix + "v2:r:key:1:qpm:sum")) == 1
            await admin.select(0)
            assert await admin.get(prefix + "v2:r:key:1:qpm:sum") is None

        # A refused password is an outage (redis-py's AuthenticationError, a ConnectionError).
        wrong = f"redis://:nope@127.0.0.1:{server.port}/0"
        limiter = RedisLimiter.from_url(wrong, settings(FailurePolicy.DENY, "test:", heartbeat=60))
        try:
            assert (await limiter.acquire([qpm(10)])).degraded
            assert not limiter.available
        finally:
            await limiter.aclose()
        async with client_of(server) as client:
            client._hello = [hiredis.pack_command(("AUTH", "nope"))]  # type: ignore[arg-type]
            with pytest.raises(redis.exceptions.AuthenticationError):
                await ping(client)
    finally:
        await admin.config_set("requirepass", "")
        await admin.aclose()


async def test_a_database_redis_refuses_fails_the_calls_behind_its_select(
    server: RedisServer,
) -> None:
    client = RespClient("127.0.0.1", server.port, db=99, timeout=5.0)  # 16 databases
    try:
        with pytest.raises(redis.exceptions.ConnectionError, match="DB index is out of range"):
            await ping(client)
    finally:
        await client.aclose()


async def test_a_call_behind_an_unanswered_auth_still_ends_at_its_deadline(
    server: RedisServer,
) -> None:
    client = RespClient("127.0.0.1", server.port, password="any", timeout=5.0)
    try:
        with paused(server):  # the kernel still accepts the connection: AUTH and the call wait
            async with asyncio.timeout(3.0):
                with pytest.raises(TimeoutError, match=r"^no answer from Redis within 0\.3 s$"):
                    await ping(client, 0.3)
    finally:
        await client.aclose()


async def test_a_call_given_up_while_connecting_does_not_hold_back_the_others() -> None:
    # Connection refused: the calls queued for the connection fail with it (after one more
    # try), the one its caller gave up on (cancelled) is skipped, not the end of the queue.
    client = RespClient("127.0.0.1", free_port(), timeout=5.0)
    try:
        first, second = ping(client, 1.0), ping(client, 1.0)
        given_up = asyncio.ensure_future(first)
        kept = asyncio.ensure_future(second)
        await asyncio.sleep(0)  # both queued, the connect started
        given_up.cancel()
        with pytest.raises(redis.exceptions.ConnectionError, match=r"^Error 111 connecting"):
            await kept
    finally:
        await client.aclose()


async def test_a_script_flushed_from_redis_is_loaded_again(server: RedisServer) -> None:
    admin = Redis.from_url(server.url)
    async with client_of(server) as client:
        try:
            script = client.register_script("return ARGV[1] + KEYS[1]")
            assert await script(keys=["2"], args=["40"]) == 42
            await admin.script_flush()
            # Both calls pipelined meet NOSCRIPT: each loads the script and runs again, in order.
            both = await asyncio.gather(
                script(keys=["1"], args=["1"]), script(keys=["2"], args=["2"])
            )
            assert list(both) == [2, 4]
            broken = client.register_script("return +")  # NOSCRIPT, then its load refused
            with pytest.raises(redis.exceptions.ResponseError, match="Error compiling script"):
                await broken(keys=[], args=[])
            assert await ping(client) == b"PONG"  # the connection is still in step
        finally:
            await admin.aclose()


async def test_a_call_fails_at_its_deadline_and_a_silent_connection_is_closed(
    server: RedisServer,
) -> None:
    async with client_of(server) as client:
        assert await ping(client) == b"PONG"
        first = client._connection
        assert first is not None
        with paused(server):
            short = asyncio.ensure_future(ping(client, 0.2))
            long = asyncio.ensure_future(ping(client, 1.5))
            with pytest.raises(TimeoutError, match=r"^no answer from Redis within 0\.2 s$"):
                await short
            assert client._connection is first  # a call on it may still be answered
            await asyncio.sleep(0.3)  # Redis answers after the first deadline, before the second
        assert await long == b"PONG"
        with paused(server):
            with pytest.raises(TimeoutError):
                await ping(client, 0.2)
            assert client._connection is None  # silent past every deadline: closed
        assert await ping(client) == b"PONG"  # on a new connection
        assert client._connection is not None
        assert client._connection is not first


async def test_a_broken_protocol_or_a_refused_connection_is_a_connection_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"?not resp\r\n")
        await writer.drain()
        await reader.read()  # until the client closes
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = RespClient("127.0.0.1", port, timeout=5.0)
        with pytest.raises(redis.exceptions.ConnectionError, match=r"^Protocol error: "):
            await ping(client)  # twice: a broken connection's call goes once more
        await client.aclose()
    finally:
        server.close()
        await server.wait_closed()
    # A server that closes each connection as soon as it is made (as Redis does past maxclients):
    # the call tries a second connection, then fails; a later call starts afresh.
    accepted: list[int] = []

    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(closing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = RespClient("127.0.0.1", port, timeout=5.0)
        for attempts in (2, 4):
            with pytest.raises(redis.exceptions.ConnectionError):
                await ping(client)
            assert len(accepted) == attempts
            assert client._connection is None
        await client.aclose()
    finally:
        server.close()
        await server.wait_closed()
    client = RespClient("127.0.0.1", port, timeout=5.0)  # nobody listens there now
    with pytest.raises(redis.exceptions.ConnectionError, match=r"^Error 111 connecting to "):
        await ping(client)
    await client.aclose()


async def test_closing_fails_the_calls_still_waiting(server: RedisServer) -> None:
    async with client_of(server) as client:
        assert await ping(client) == b"PONG"
        with paused(server):
            waiting = asyncio.ensure_future(ping(client))
            await asyncio.sleep(0.05)
            await client.aclose()
            with pytest.raises(redis.exceptions.ConnectionError, match=r"^the client was closed$"):
                await waiting


@pytest.mark.parametrize(
    ("reply", "cls", "message"),
    [
        ("NOSCRIPT No matching script.", redis.exceptions.NoScriptError, "No matching script."),
        ("READONLY You can't write.", redis.exceptions.ReadOnlyError, "You can't write."),
        ("OOM command not allowed", redis.exceptions.OutOfMemoryError, "command not allowed"),
        ("LOADING Redis is loading", redis.exceptions.BusyLoadingError, "Redis is loading"),
        ("MASTERDOWN Link is down", redis.exceptions.MasterDownError, "Link is down"),
        ("NOAUTH Auth required.", redis.exceptions.AuthenticationError, "Auth required."),
        ("WRONGPASS invalid pair", redis.exceptions.AuthenticationError, "invalid pair"),
        # Whole messages: the one error of ERR that redis-py tells apart, and the rest.
        ("ERR max number of clients reached", redis.exceptions.ConnectionError, None),
        ("WRONGTYPE Operation against a key", redis.exceptions.ResponseError, None),
        ("ERR max number of clients", redis.exceptions.ResponseError, None),
    ],
)
def test_error_replies_become_redis_pys_exceptions(
    reply: str, cls: type[Exception], message: str | None
) -> None:
    error = _error(hiredis.ReplyError(reply))
    assert type(error) is cls
    assert str(error) == (reply if message is None else message)


async def test_a_call_given_up_on_the_wire_does_not_hold_back_the_calls_behind_it(
    server: RedisServer,
) -> None:
    admin = Redis.from_url(server.url)
    async with client_of(server) as client:
        try:
            assert await ping(client) == b"PONG"
            # Redis stopped: the call behind one its caller gave up on still ends at its deadline.
            with paused(server):
                given_up = asyncio.ensure_future(ping(client, 5.0))
                behind = asyncio.ensure_future(ping(client, 0.3))
                await asyncio.sleep(0.05)
                given_up.cancel()
                async with asyncio.timeout(3.0):
                    with pytest.raises(TimeoutError, match=r"^no answer from Redis within 0\.3 s$"):
                        await behind
            # The connection broken under both: the call behind goes once more and is answered.
            script = client.register_script("return 1")
            assert await script(keys=[], args=[]) == 1
            await admin.client_pause(10_000, all=False)  # scripts wait, the admin's commands not
            try:
                given_up = asyncio.ensure_future(script(keys=[], args=[]))
                behind = asyncio.ensure_future(script(keys=[], args=[]))
                await asyncio.sleep(0.05)
                given_up.cancel()
                assert await admin.client_kill_filter(_type="normal", skipme=True) == 1
            finally:
                await admin.client_unpause()
            async with asyncio.timeout(3.0):
                assert await behind == 1
        finally:
            await admin.aclose()


@contextmanager
def a_connect_that_hangs() -> Iterator[int]:
    """A port on loopback whose accept queue is full: the kernel drops a new connection's SYN, so
    connecting to it neither completes nor fails (until the client gives up)."""
    listener = socket.socket()
    filling = [socket.socket() for _ in range(2)]
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for sock in filling:
            sock.setblocking(False)
            with suppress(BlockingIOError):
                sock.connect(("127.0.0.1", port))
        yield port
    finally:
        for sock in (*filling, listener):
            sock.close()


@contextmanager
def no_error_to_the_event_loop() -> Iterator[None]:
    """Nothing the block runs raises into the loop's exception handler (a callback's error)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        yield
    finally:
        loop.set_exception_handler(None)
    assert errors == []


async def test_calls_queued_while_connecting_each_fail_at_their_own_deadline() -> None:
    with a_connect_that_hangs() as port, no_error_to_the_event_loop():
        async with client_at(port) as client:
            short = asyncio.ensure_future(ping(client, 0.2))
            long = asyncio.ensure_future(ping(client, 0.5))
            async with asyncio.timeout(2.0):  # well before the connect's own 5 s
                with pytest.raises(TimeoutError, match=r"^no answer from Redis within 0\.2 s$"):
                    await short
                assert not long.done()  # still queued for the connection
                with pytest.raises(TimeoutError, match=r"^no answer from Redis within 0\.5 s$"):
                    await long
            assert client._connecting is not None  # the connect goes on, for the next calls


async def test_closing_while_connecting_fails_the_queued_calls_and_stops_the_connect() -> None:
    with a_connect_that_hangs() as port:
        client = RespClient("127.0.0.1", port, timeout=5.0)
        queued = asyncio.ensure_future(ping(client, 5.0))
        await asyncio.sleep(0)  # queued, the connect started
        connecting = client._connecting
        assert connecting is not None
        async with asyncio.timeout(1.0):
            await client.aclose()
            assert connecting.cancelled()
            assert client._connecting is None
            with pytest.raises(redis.exceptions.ConnectionError, match=r"^the client was closed$"):
                await queued


async def test_a_connection_closed_by_the_client_leaves_no_error_to_the_event_loop(
    server: RedisServer,
) -> None:
    # The transport tells the protocol of its end once more after abort(): nothing is left to
    # fail then, and nothing may raise into the loop's exception handler.
    with no_error_to_the_event_loop():
        async with client_of(server) as client:
            assert await ping(client) == b"PONG"
            with paused(server), pytest.raises(TimeoutError):
                await ping(client, 0.2)  # silent past its deadline: the client aborts it
            for _ in range(3):  # the transport's own connection_lost, called soon after
                await asyncio.sleep(0)
            assert await ping(client) == b"PONG"
        for _ in range(3):
            await asyncio.sleep(0)


async def test_a_connect_past_the_clients_timeout_fails_its_calls_once() -> None:
    # Bounded by the client's timeout, not the call's; a connect that timed out is not tried again
    # (a broken connection is: see the refused and closing servers above).
    loop = asyncio.get_running_loop()
    with a_connect_that_hangs() as port:
        async with client_at(port, timeout=0.5) as client:
            started = loop.time()
            async with asyncio.timeout(3.0):
                with pytest.raises(
                    redis.exceptions.TimeoutError, match=r"^Timeout connecting to server$"
                ):
                    await ping(client, 10.0)
            assert loop.time() - started < 0.9  # one connect's 0.5 s, not two
            assert client._connecting is None


async def test_a_refused_connect_says_where_and_why() -> None:
    port = free_port()
    # Where, then the reason once (not "[Errno 111] ..." again after the number).
    message = rf"^Error 111 connecting to 127\.0\.0\.1:{port}\. [^\[]+\.$"
    async with client_at(port) as client:
        with pytest.raises(redis.exceptions.ConnectionError, match=message):
            await ping(client)


async def test_a_script_redis_still_lacks_after_its_load_fails_with_noscript(
    server: RedisServer,
) -> None:
    # One load per call, as redis-py's Script: a second NOSCRIPT (the load ran, the script
    # named still missing) is the call's error, and the connection stays in step.
    async with client_of(server) as client:
        script = client.register_script("return 1")
        script.sha = "0" * 40  # a script no load will make
        async with asyncio.timeout(3.0):
            with pytest.raises(redis.exceptions.NoScriptError):
                await script(keys=[], args=[])
            assert await ping(client) == b"PONG"


async def test_a_scripts_load_counts_against_its_calls_deadline(server: RedisServer) -> None:
    # The load sent on NOSCRIPT carries its call's deadline: a load Redis holds (here a BLPOP
    # in its place, blocking the connection for 2 s) fails the call at that deadline.
    async with client_of(server) as client:
        script = client.register_script("return 1")
        script.sha = "0" * 40
        script.load = _pack(("BLPOP", f"test:{uuid.uuid4().hex}", "2"))
        async with asyncio.timeout(1.5):
            with pytest.raises(TimeoutError, match=r"^no answer from Redis within 0\.3 s$"):
                await client.evalsha(script, [], [], 0.3)


async def test_a_client_without_a_database_uses_redis_default_one(server: RedisServer) -> None:
    admin = Redis.from_url(server.url)  # database 0
    key = f"test:{uuid.uuid4().hex}"
    try:
        async with client_of(server) as client:
            assert await client.execute(_pack(("SET", key, "1")), 5.0) == b"OK"
        assert await admin.get(key) == b"1"
    finally:
        await admin.delete(key)
        await admin.aclose()
    default = RespClient(timeout=1.0)
    assert (default.host, default.port, default.db) == ("localhost", 6379, 0)


async def test_a_call_on_a_connection_closed_twice_under_it_fails_with_the_closing(
    server: RedisServer,
) -> None:
    async with admin_of(server) as admin, client_of(server) as client:
        assert await ping(client) == b"PONG"
        first = client._connection
        await admin.client_pause(10_000, all=False)  # scripts wait, the admin's commands not
        try:
            script = client.register_script("return 1")
            call = asyncio.ensure_future(script(keys=[], args=[]))
            async with asyncio.timeout(3.0):
                await asyncio.sleep(0)
                assert await admin.client_kill_filter(_type="normal", skipme=True) == 1
                while client._connection is None or client._connection is first:
                    await asyncio.sleep(0.01)  # the call sent again on a new connection
                assert await admin.client_kill_filter(_type="normal", skipme=True) == 1
                with pytest.raises(
                    redis.exceptions.ConnectionError, match=r"^Connection closed by server\.$"
                ):
                    await call
        finally:
            await admin.client_unpause()


async def test_closing_with_a_call_on_the_wire_opens_no_connection_again(
    server: RedisServer,
) -> None:
    async with client_of(server) as client:
        assert await ping(client) == b"PONG"
        with paused(server):  # the call stays on the wire, unanswered
            waiting = asyncio.ensure_future(ping(client))
            await asyncio.sleep(0)  # sent
            await client.aclose()
            with pytest.raises(redis.exceptions.ConnectionError, match=r"^the client was closed$"):
                await waiting
            assert client._connecting is None  # the call was not sent again
            assert client._queue == []


async def test_a_connection_reset_under_a_call_is_a_connection_error_naming_the_reset() -> None:
    # A server that resets the connection (RST, SO_LINGER 0) once it has a call: the call goes
    # once more on a new connection, then fails with the reset as a ConnectionError.
    resets: list[int] = []

    async def resetting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        resets.append(1)
        writer.transport.abort()

    server = await asyncio.start_server(resetting, "127.0.0.1", 0)
    try:
        async with client_at(server.sockets[0].getsockname()[1]) as client:
            async with asyncio.timeout(3.0):
                with pytest.raises(
                    redis.exceptions.ConnectionError,
                    match=r"^ConnectionResetError: \[Errno 104\] Connection reset by peer$",
                ):
                    await ping(client)
            assert len(resets) == 2
    finally:
        server.close()
        await server.wait_closed()
