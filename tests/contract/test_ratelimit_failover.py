"""RedisLimiter when its Redis dies, hangs and comes back: each policy, the replay, the probe.

Each test runs its own ``redis-server`` so that killing or stopping it disturbs nothing else.
Two limiters on one prefix stand for two gateway replicas of one cluster.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from keyplane.ratelimit import (
    Decision,
    FailurePolicy,
    ManualClock,
    RedisLimiter,
    RedisLimiterSettings,
    RequestLimit,
    TokenLimit,
)
from keyplane.ratelimit.redis import _redis_py
from tests.support.limits import qpm
from tests.support.redis import RedisServer, counted


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def settings(policy: FailurePolicy, prefix: str, **extra: Any) -> RedisLimiterSettings:
    # A killed server refuses connections at once, so a generous timeout costs nothing here and
    # keeps a loaded machine's slow replies from counting as outages while Redis is up.
    values: dict[str, Any] = {"timeout": 5.0, "probe_min": 0.01, "probe_max": 0.05}
    values.update(extra)
    return RedisLimiterSettings(policy=policy, replicas=2, prefix=prefix, **values)


@asynccontextmanager
async def replicas(
    server: RedisServer,
    policy: FailurePolicy,
    count: int = 2,
    *,
    redis_py: bool = False,
    **extra: Any,
) -> AsyncIterator[list[RedisLimiter]]:
    """``count`` limiters sharing one prefix: the replicas of one cluster, each on from_url's
    client for ``server.url`` (its own), or with ``redis_py`` on the redis-py client from_url
    gives the URLs it leaves to redis-py (``rediss://``...)."""
    prefix = f"test:{uuid.uuid4().hex}:"

    def made() -> RedisLimiter:
        given = settings(policy, prefix, **extra)
        if redis_py:
            return RedisLimiter(_redis_py(server.url, given), given, owns_client=True)
        return RedisLimiter.from_url(server.url, given)

    limiters = [made() for _ in range(count)]
    try:
        for limiter in limiters:
            await limiter.start()
        yield limiters
    finally:
        for limiter in limiters:
            await limiter.aclose()


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 10.0
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)  # polling a condition with a deadline


async def admitted(limiter: RedisLimiter, n: int, *limits: RequestLimit) -> list[Decision]:
    return [d for d in [await limiter.acquire(list(limits)) for _ in range(n)] if d.allowed]


async def redis_count(server: RedisServer, prefix: str, counter: str) -> int:
    client = Redis.from_url(server.url)
    try:
        return counted(await client.get(f"{prefix}v2:r:{counter}:sum"))
    finally:
        await client.aclose()


@pytest.mark.parametrize("policy", list(FailurePolicy))
async def test_policy_applies_while_redis_is_down_and_redis_rules_again_after(
    server: RedisServer, policy: FailurePolicy
) -> None:
    # Two replicas (deny and local-strict wait for both to replay into a Redis that lost its
    # data); the test drives one.
    async with replicas(server, policy) as (limiter, _):
        assert len(await admitted(limiter, 3, qpm(10))) == 3
        assert limiter.failures == 0
        assert limiter.available

        server.stop()
        failures_before = sample("keyplane_ratelimit_failures_total", {"policy": policy.value})
        downs_before = sample("keyplane_ratelimit_transitions_total", {"to": "down"})
        decisions = [await limiter.acquire([qpm(10, "key:2:qpm")]) for _ in range(20)]
        await limiter.charge([TokenLimit("tpm", "key:2:tpm", 1000)], 5)  # must not raise
        assert all(d.degraded for d in decisions)
        assert not limiter.available
        assert sample("keyplane_ratelimit_redis_up", {"prefix": limiter.prefix}) == 0
        assert sample("keyplane_ratelimit_transitions_total", {"to": "down"}) == downs_before + 1
        allowed = sum(d.allowed for d in decisions)
        if policy is FailurePolicy.ALLOW:
            assert allowed == 20
        elif policy in (FailurePolicy.DENY, FailurePolicy.LOCAL_STRICT):
            # local-strict: Redis answered less than a minute ago, so the window may still hold
            # what the other replicas admitted through it.
            assert allowed == 0
            assert all(d.violated is None and d.retry_after > 0 for d in decisions)
        else:
            assert allowed == 10 // 2  # the limit divided among the replicas
            refused = decisions[-1]
            assert refused.violated is not None
            assert refused.violated.message == "qpm limit exceeded: 5/5"
        assert limiter.failures == 20
        assert (
            sample("keyplane_ratelimit_failures_total", {"policy": policy.value})
            == failures_before + 20
        )

        server.start()  # same port, empty
        # The probe brings the limiter back without any request asking.
        await until(lambda: limiter.available, "the limiter back on Redis")
        assert sample("keyplane_ratelimit_redis_up", {"prefix": limiter.prefix}) == 1
        failures = limiter.failures
        fresh = [await limiter.acquire([qpm(3, "key:3:qpm")]) for _ in range(10)]
        if policy in (FailurePolicy.LOCAL, FailurePolicy.LOCAL_STRICT):
            # For one window after its return a replica keeps to its share too: the other one
            # may still be deciding locally.
            assert sum(d.allowed for d in fresh) == 3 // 2
        else:
            assert sum(d.allowed for d in fresh) == 3
        assert not any(d.degraded for d in fresh)
        assert limiter.failures == failures


async def test_recovery_replays_every_admission_redis_lost(server: RedisServer) -> None:
    # Two replicas split a qpm of 10 through Redis, Redis dies, each admits its local share, and
    # Redis comes back empty: once both have replayed, Redis counts all 10 and admits no more.
    async with replicas(server, FailurePolicy.LOCAL) as (a, b):
        limit = qpm(10)
        assert len(await admitted(a, 3, limit)) == 3
        assert len(await admitted(b, 3, limit)) == 3
        server.stop()
        local = [await a.acquire([limit]) for _ in range(5)] + [
            await b.acquire([limit]) for _ in range(5)
        ]
        # Each replica's share is 5, and it counts the 3 it admitted through Redis.
        assert sum(d.allowed for d in local) == 4
        replayed_before = sample("keyplane_ratelimit_replayed_entries_total")
        server.start()
        await until(lambda: a.available and b.available, "both replicas back on Redis")
        assert await redis_count(server, a.prefix, "key:1:qpm") == 10
        assert sample("keyplane_ratelimit_replayed_entries_total") - replayed_before == 10
        assert await admitted(a, 3, limit) == []
        assert await admitted(b, 3, limit) == []


async def test_recovery_after_a_hang_replays_only_what_was_decided_locally(
    server: RedisServer,
) -> None:
    async with replicas(server, FailurePolicy.LOCAL, count=1, timeout=0.3) as (a,):
        limit = qpm(12)
        assert len(await admitted(a, 2, limit)) == 2
        server.pause()
        try:
            local = await admitted(a, 10, limit)
        finally:
            server.resume()
        assert len(local) == 12 // 2 - 2
        await until(lambda: a.available, "the replica back on Redis")
        # Redis kept its 2 and got the 4 decided locally, each once; plus, perhaps, the one call
        # that was waiting when Redis hung: Redis ran it on waking, though the replica had
        # decided that request locally (counted twice: the safe side).
        assert await redis_count(server, a.prefix, "key:1:qpm") in (6, 7)


async def test_a_replay_retried_after_a_lost_reply_counts_nothing_twice(
    server: RedisServer,
) -> None:
    async with replicas(server, FailurePolicy.LOCAL, count=1) as (a,):
        limit = qpm(20)
        assert len(await admitted(a, 4, limit)) == 4
        server.stop()
        assert len(await admitted(a, 10, limit)) == 20 // 2 - 4
        server.start()
        await until(lambda: a.available, "the replica back on Redis")
        assert await redis_count(server, a.prefix, "key:1:qpm") == 10
        # The same replay again, as if its reply had been lost: Redis has seen every sequence
        # number in it, so nothing changes.
        for complete in (False, True):
            status, _ = await a._replay(complete=complete)
            assert status == 0
        assert await redis_count(server, a.prefix, "key:1:qpm") == 10


async def test_token_charges_made_while_down_are_replayed(server: RedisServer) -> None:
    async with replicas(server, FailurePolicy.LOCAL, count=1) as (a,):
        tokens = [TokenLimit("tpm", "key:1:tpm", 1000)]
        await a.charge(tokens, 300)
        server.stop()
        await a.charge(tokens, 150)
        server.start()
        await until(lambda: a.available, "the replica back on Redis")
        client = Redis.from_url(server.url)
        try:
            assert counted(await client.get(a.prefix + "v2:t:key:1:tpm:sum")) == 450
        finally:
            await client.aclose()


async def test_decisions_never_wait_on_a_hung_redis_longer_than_the_timeout(
    server: RedisServer,
) -> None:
    timeout = 0.5
    async with replicas(server, FailurePolicy.LOCAL, count=1, timeout=timeout) as (a,):
        loop = asyncio.get_running_loop()
        limit = qpm(1000)

        async def timed() -> float:
            started = loop.time()
            await a.acquire([limit])
            return loop.time() - started

        assert (await a.acquire([limit])).allowed
        server.pause()
        try:
            # 100 concurrent decisions, more than the connection pool holds.
            waits = await asyncio.gather(*(timed() for _ in range(100)))
            later = [await timed() for _ in range(20)]
        finally:
            server.resume()
        # 0.4 s for a loaded machine's event loop; without the overall bound, waiting for a
        # pooled connection and then for the reply takes two timeouts, and more to clean up.
        assert max(waits) < timeout + 0.4, max(waits)
        assert not a.available
        # Once the hang is known, decisions do not touch Redis at all.
        assert max(later) < timeout / 2, max(later)
        await until(lambda: a.available, "the replica back on Redis")


async def test_local_strict_refuses_for_one_window_then_admits_the_share(
    server: RedisServer,
) -> None:
    clock = ManualClock(1000.0)
    prefix = f"test:{uuid.uuid4().hex}:"
    limiter = RedisLimiter.from_url(
        server.url, settings(FailurePolicy.LOCAL_STRICT, prefix), clock=clock
    )
    try:
        qps = RequestLimit("qps", "key:1:qps", 10, 1.0)
        assert len(await admitted(limiter, 10, qps)) == 10
        server.stop()
        clock.advance(0.5)
        refused = await limiter.acquire([qps])
        assert not refused.allowed
        assert refused.degraded
        assert refused.retry_after == pytest.approx(1.0)  # the whole window since the loss
        clock.advance(0.9)
        assert (await limiter.acquire([qps])).retry_after == pytest.approx(0.1)
        clock.advance(0.1)
        assert len(await admitted(limiter, 10, qps)) == 10 // 2
        clock.advance(1.0)
        assert len(await admitted(limiter, 10, qps)) == 10 // 2
    finally:
        await limiter.aclose()


async def test_local_strict_waits_for_every_replica_after_redis_lost_its_data(
    server: RedisServer,
) -> None:
    async with replicas(server, FailurePolicy.LOCAL_STRICT, timeout=5.0) as (a, b):
        limit = qpm(10)
        assert len(await admitted(b, 8, limit)) == 8  # b took most of the window
        assert len(await admitted(a, 2, limit)) == 2
        # b stops probing: until it replays, Redis will not know its 8.
        assert b._monitor is not None
        b._monitor.cancel()
        server.stop()
        assert not (await a.acquire([limit])).allowed
        assert not (await b.acquire([limit])).allowed
        server.start()

        async def a_has_replayed() -> bool:
            client = Redis.from_url(server.url)
            try:
                return bool(await client.sismember(a.prefix + "roster", a.replica_id))
            finally:
                await client.aclose()

        await until(a_has_replayed, "a replaying")
        # Watch a through some 30 of its probes (10 ms apart): it must still be waiting for b.
        await asyncio.sleep(0.3)
        assert not a.available
        status, _ = await b._replay(complete=True)  # b replays (its probe would)
        assert status == 0
        await until(lambda: a.available, "a back on Redis once b has replayed")
        assert await redis_count(server, a.prefix, "key:1:qpm") == 10
        assert await admitted(a, 3, limit) == []
