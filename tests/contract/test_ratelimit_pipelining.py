"""RedisLimiter's auto-pipelining: the calls of one event-loop turn go to Redis as one script call.

Batching must buy CPU, never exactness: every decision of a batch is the one it would have been
alone, in the order the calls were made, and a batch that Redis does not answer in time fails
each of its calls (and those queued behind it) within the timeout, so the failure policy answers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import DataError

from keyplane.ratelimit import (
    FailurePolicy,
    RedisLimiter,
    RedisLimiterSettings,
    RequestLimit,
    TokenLimit,
)
from tests.support.redis import RedisServer, counted


def limiter(server: RedisServer, **extra: Any) -> RedisLimiter:
    # A generous timeout unless a test sets one: a loaded machine's slow answer is no outage.
    values: dict[str, Any] = {"timeout": 10.0, "prefix": f"test:{uuid.uuid4().hex}:", **extra}
    return RedisLimiter.from_url(server.url, RedisLimiterSettings(**values))


async def script_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return sum(
        int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval")
    )


async def test_calls_in_flight_share_round_trips_and_stay_exact(server: RedisServer) -> None:
    shared = limiter(server)
    client = Redis.from_url(server.url)
    qpm = RequestLimit("qpm", "key:1:qpm", 50, 60.0)
    try:
        await shared.start()
        before = await script_calls(client)
        decisions = await asyncio.gather(*(shared.acquire([qpm]) for _ in range(200)))
        calls = await script_calls(client) - before
        # Exactly the limit, and to the first 50 calls made: each runs in order, as if alone.
        assert [d.allowed for d in decisions] == [True] * 50 + [False] * 150
        assert [d.requests.remaining for d in decisions[:50] if d.requests] == list(
            range(49, -1, -1)
        )
        assert all(d.violated is not None and d.violated.actual == 50 for d in decisions[50:])
        # 200 calls made in one turn: at most two batches go at once, at most 128 calls each.
        assert calls <= 4, calls
        assert counted(await client.get(shared.prefix + "v2:r:key:1:qpm:sum")) == 50
        assert shared.failures == 0
    finally:
        await client.aclose()
        await shared.aclose()


async def test_charges_and_acquires_of_one_batch_apply_in_the_order_made(
    server: RedisServer,
) -> None:
    shared = limiter(server)
    tpm = TokenLimit("tpm", "key:1:tpm", 100)
    try:
        await shared.start()
        # One turn: a charge that puts the counter over its limit, then an acquire, which the
        # charge made before it must refuse; an acquire made before the charge is admitted.
        first, _, second = await asyncio.gather(
            shared.acquire([], [tpm]), shared.charge([tpm], 101), shared.acquire([], [tpm])
        )
        assert first.allowed
        assert not second.allowed
        assert second.violated is not None
        assert (second.violated.kind, second.violated.actual) == ("tokens", 101)
        assert shared.failures == 0
    finally:
        await shared.aclose()


async def test_many_limiters_many_tasks_never_exceed_a_shared_limit(server: RedisServer) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    replicas = [limiter(server, prefix=prefix) for _ in range(3)]
    qpm = RequestLimit("qpm", "key:1:qpm", 37, 60.0)
    try:

        async def hammer(shared: RedisLimiter) -> int:
            admitted = 0
            for _ in range(10):
                batch = await asyncio.gather(*(shared.acquire([qpm]) for _ in range(8)))
                admitted += sum(d.allowed for d in batch)
            return admitted

        counts = await asyncio.gather(*(hammer(r) for r in replicas))
        assert sum(counts) == 37
        assert all(r.failures == 0 for r in replicas)
    finally:
        for r in replicas:
            await r.aclose()


async def test_a_hung_redis_fails_the_batch_and_the_calls_queued_behind_it_in_time(
    server: RedisServer,
) -> None:
    timeout = 0.3
    shared = limiter(server, timeout=timeout, policy=FailurePolicy.DENY)
    qpm = RequestLimit("qpm", "key:1:qpm", 1000, 60.0)
    try:
        await shared.start()
        assert (await shared.acquire([qpm])).allowed
        server.pause()
        try:
            started = time.monotonic()
            # 300 calls: more than two batches of 128, so some wait behind the hung ones.
            decisions = await asyncio.gather(*(shared.acquire([qpm]) for _ in range(300)))
            took = time.monotonic() - started
        finally:
            server.resume()
        assert all(not d.allowed and d.degraded for d in decisions)
        assert shared.failures == 300
        # Each waited at most the timeout (plus scheduling slack), queueing included.
        assert took < timeout + 0.5, took
    finally:
        await shared.aclose()


def test_the_limiter_s_connections_pack_commands_as_redis_py_does() -> None:
    """The limiter's connections pack plain str/bytes/int commands in one hiredis call; the bytes
    are redis-py's own, and anything else (a multi-word command, a bool) is left to redis-py."""
    from redis.asyncio.connection import Connection

    from keyplane.ratelimit.redis import _fast_packing

    fast, plain = _fast_packing(Connection)(), Connection()
    for args in (
        ("EVALSHA", "0123abcd", 3, b"k:log", b"k:sum", "é x", b"a 1 2 3", -7, 2**62),
        ("PING",),
        ("SCRIPT LOAD", "return 1"),
        ("SET", "k", memoryview(b"v")),
    ):
        assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*args)), args
    with pytest.raises(DataError):
        fast.pack_command("SET", "k", True)
