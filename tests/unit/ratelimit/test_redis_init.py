"""What a RedisLimiter is made with (#18: the survivors of ``RedisLimiter.__init__`` and
``_fast_packing``): who closes the client, the Redis gauge it starts with, the local limiter and
journal built with its own exact_max and buckets, and the command packing of its connections.
No server is needed: Redis is a free loopback port nobody listens on."""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
import msgspec
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from keyplane.ratelimit import (
    FailurePolicy,
    ManualClock,
    MemoryLimiter,
    RedisLimiter,
    RedisLimiterSettings,
    RequestLimit,
    TokenLimit,
)
from keyplane.ratelimit.redis import _fast_packing
from keyplane.ratelimit.resp import PATIENCE as _PATIENCE
from keyplane.ratelimit.resp import RespClient
from tests.support.procs import free_port


def nowhere() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


async def test_a_client_given_to_the_limiter_is_left_to_the_caller_to_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed: list[str] = []

    def recorder(name: str) -> Any:
        async def aclose() -> None:
            closed.append(name)

        return aclose

    client = Redis.from_url(nowhere())
    monkeypatch.setattr(client, "aclose", recorder("given"))
    given = RedisLimiter(client, RedisLimiterSettings(timeout=5.0))
    await given.aclose()
    assert closed == []
    made = RedisLimiter.from_url(nowhere(), RedisLimiterSettings(timeout=5.0))
    monkeypatch.setattr(made._client, "aclose", recorder("made"))
    await made.aclose()
    assert closed == ["made"]  # from_url's client is the limiter's own
    # What the recorders stood in for.
    await Redis.aclose(client)
    assert isinstance(made._client, RespClient)  # redis:// : the limiter's own client
    await RespClient.aclose(made._client)


async def test_a_new_limiter_reports_redis_up() -> None:
    prefix = "test:init-gauge:"
    limiter = RedisLimiter.from_url(nowhere(), RedisLimiterSettings(prefix=prefix, timeout=5.0))
    try:
        assert REGISTRY.get_sample_value("keyplane_ratelimit_redis_up", {"prefix": prefix}) == 1
    finally:
        await limiter.aclose()


async def test_the_local_policy_and_the_journal_use_the_limiters_exact_max_and_buckets() -> None:
    # Not the defaults (1000, 60, 60): a request limit of 2 goes in buckets of 60 s / 4, tokens in
    # buckets of 60 s / 3, both locally while Redis is down and in what a replay would send.
    clock = ManualClock(1000.25)
    settings = RedisLimiterSettings(
        policy=FailurePolicy.LOCAL, timeout=5.0, exact_max=1, buckets=4, token_buckets=3
    )
    reference = MemoryLimiter(clock=clock, exact_max=1, buckets=4, token_buckets=3)
    qpm = RequestLimit("qpm", "key:1:qpm", 2, 60.0)
    tpm = TokenLimit("tpm", "key:1:tpm", 10, 60.0)
    limiter = RedisLimiter.from_url(nowhere(), settings, clock=clock)
    try:
        for _ in range(3):  # two admitted, then a refusal whose wait runs to a bucket's end
            got = await limiter.acquire([qpm])
            assert got == msgspec.structs.replace(reference.acquire_now([qpm]), degraded=True)
        assert not got.allowed
        await limiter.charge([tpm], 11)
        reference.charge_now([tpm], 11)
        clock.advance(1.0)
        got = await limiter.acquire([], [tpm])
        assert not got.allowed
        assert got == msgspec.structs.replace(reference.acquire_now([], [tpm]), degraded=True)

        replay = limiter._journal.replay(clock.monotonic(), 0, limiter._counters)
        assert replay.keys == [
            f"{limiter.prefix}v2:r:key:1:qpm:log", f"{limiter.prefix}v2:r:key:1:qpm:sum",
            f"{limiter.prefix}v2:t:key:1:tpm:log", f"{limiter.prefix}v2:t:key:1:tpm:sum",
        ]  # fmt: skip
        window = 60_000_000
        # Per series: window, bucket width, entry count, then (age, seq, units) per entry.
        assert replay.args[:3] == [window, window // 4, 2]
        assert replay.args[9:12] == [window, window // 3, 1]
    finally:
        await limiter.aclose()


async def test_from_urls_sockets_time_out_at_the_timeout_and_at_a_replays_patience_in_one() -> None:
    # _replay sets _PATIENCE around its call (contract/test_ratelimit_failover_edges.py holds the
    # replay itself); a connection made meanwhile or before reads it as its socket timeout.
    # redis-py's connections: from_url's client for a rediss:// URL (TLS).
    limiter = RedisLimiter.from_url(
        nowhere().replace("redis://", "rediss://"), RedisLimiterSettings(timeout=0.3)
    )
    try:
        assert isinstance(limiter._client, Redis)
        pool = limiter._client.connection_pool
        connection = pool.connection_class(**pool.connection_kwargs)  # as the pool makes them
        assert connection.socket_timeout == 0.3
        token = _PATIENCE.set(1.2)
        try:
            assert connection.socket_timeout == 1.2
        finally:
            _PATIENCE.reset(token)
        assert connection.socket_timeout == 0.3
        connection.socket_timeout = 0.7  # redis-py may set it (its relaxed timeouts)
        assert connection.socket_timeout == 0.7
    finally:
        await limiter.aclose()


async def test_from_urls_own_client_gives_a_call_the_timeout_or_a_replays_patience() -> None:
    # A redis:// URL: the limiter's own client (resp.py), whose calls made without a deadline (as
    # redis-py's scripts are called) fail at the timeout, or at _PATIENCE while it is set.
    limiter = RedisLimiter.from_url(nowhere(), RedisLimiterSettings(timeout=0.3))
    client = limiter._client
    try:
        assert isinstance(client, RespClient)
        assert client.timeout == 0.3
        loop = asyncio.get_running_loop()
        sent: list[float] = []

        def execute(packed: bytes, timeout: float, script: Any = None) -> asyncio.Future[Any]:
            sent.append(timeout)
            future = loop.create_future()
            future.set_result(None)
            return future

        client.execute = execute  # type: ignore[method-assign]
        await limiter._batch_script(keys=[], args=[])
        token = _PATIENCE.set(1.2)
        try:
            await limiter._batch_script(keys=[], args=[])
        finally:
            _PATIENCE.reset(token)
        await limiter._batch_script(keys=[], args=[])
        assert sent == [0.3, 1.2, 0.3]
    finally:
        await limiter.aclose()


async def test_from_urls_redis_py_client_comes_with_the_settings_and_clock_and_is_owned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock(7.5)
    given = RedisLimiterSettings(timeout=5.0, prefix="test:tls:")
    limiter = RedisLimiter.from_url(nowhere().replace("redis://", "rediss://"), given, clock=clock)
    client = limiter._client
    assert isinstance(client, Redis)
    assert limiter.settings is given
    assert limiter._now() == 7.5
    closed: list[bool] = []

    async def aclose() -> None:
        closed.append(True)

    monkeypatch.setattr(client, "aclose", aclose)
    await limiter.aclose()
    assert closed == [True]
    await Redis.aclose(client)


def test_from_url_gives_redis_urls_its_own_client_and_the_rest_to_redis_py() -> None:
    lean = RedisLimiter.from_url("redis://u%40x:p%3Aw@10.1.2.3:6380/4")._client
    assert isinstance(lean, RespClient)
    assert (lean.host, lean.port, lean.db) == ("10.1.2.3", 6380, 4)
    assert lean._hello == [
        hiredis.pack_command(("AUTH", "u@x", "p:w")),  # type: ignore[arg-type]
        hiredis.pack_command(("SELECT", 4)),  # type: ignore[arg-type]
    ]
    plain = RedisLimiter.from_url("redis://:secret@localhost")._client
    assert isinstance(plain, RespClient)
    assert (plain.host, plain.port, plain.db) == ("localhost", 6379, 0)
    assert plain._hello == [hiredis.pack_command(("AUTH", "secret"))]  # type: ignore[arg-type]
    assert RedisLimiter.from_url("redis://h")._client._hello == []  # type: ignore[union-attr]
    default = RedisLimiter.from_url("redis:///2")._client  # no host: redis-py's default
    assert isinstance(default, RespClient)
    assert (default.host, default.port, default.db) == ("localhost", 6379, 2)
    for url in ("rediss://h:1/0", "unix:///tmp/redis.sock", "redis://h:1/0?protocol=3"):
        assert isinstance(RedisLimiter.from_url(url)._client, Redis), url


def test_the_limiters_connections_pack_plain_commands_in_one_call_into_hiredis() -> None:
    packed_by_base: list[tuple[Any, ...]] = []

    class Base(Connection):
        def pack_command(self, *args: Any) -> list[bytes]:
            packed_by_base.append(args)
            return super().pack_command(*args)

    fast = _fast_packing(Base)
    assert issubclass(fast, Base)
    assert fast.__name__ == "Base"
    connection = fast(host="127.0.0.1", port=free_port())
    plain = Connection(host="127.0.0.1", port=free_port())
    args: tuple[Any, ...] = ("EVALSHA", "0" * 40, 2, b"rl:r:key:1:qpm:log", "a 2 - 7 1 60000000 0")
    assert connection.pack_command(*args) == [hiredis.pack_command(args)]
    assert connection.pack_command(*args) == plain.pack_command(*args)  # the same bytes
    assert packed_by_base == []
    # A command name of two words, or an argument hiredis does not take: the base's, and its
    # refusal.
    two_words = ("SCRIPT LOAD", "return 1")
    assert connection.pack_command(*two_words) == plain.pack_command(*two_words)
    with pytest.raises(DataError, match="'bool'"):
        connection.pack_command("SET", "k", True)
    assert packed_by_base == [two_words, ("SET", "k", True)]
