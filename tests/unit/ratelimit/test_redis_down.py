"""The Redis limiter's failure policies against a Redis that is not there (connection refused on
a free loopback port): every decision comes from the policy at once, and no server is needed.
The failover with a real Redis that stops and returns is in tests/contract."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from keyplane.ratelimit import (
    FailurePolicy,
    ManualClock,
    RedisLimiter,
    RedisLimiterSettings,
    TokenLimit,
)
from tests.support.procs import free_port


@asynccontextmanager
async def unreachable(
    policy: FailurePolicy, replicas: int = 1, clock: ManualClock | None = None
) -> AsyncIterator[RedisLimiter]:
    limiter = RedisLimiter.from_url(
        f"redis://127.0.0.1:{free_port()}/0",
        RedisLimiterSettings(policy=policy, replicas=replicas, timeout=5.0),
        clock=clock,
    )
    try:
        yield limiter
    finally:
        await limiter.aclose()


async def test_local_gives_each_replica_its_share_of_a_token_limit() -> None:
    tpm = TokenLimit("tpm", "key:1:tpm", 11)
    async with unreachable(FailurePolicy.LOCAL, replicas=2) as limiter:
        await limiter.charge([tpm], 5)  # kept locally: Redis is down
        assert not limiter.available
        at_share = await limiter.acquire([], [tpm])
        assert at_share.allowed
        assert at_share.degraded
        assert at_share.tokens is not None
        assert (at_share.tokens.limit, at_share.tokens.remaining) == (5, 0)  # 11 // 2
        await limiter.charge([tpm], 1)
        over = await limiter.acquire([], [tpm])
        assert not over.allowed
        assert over.violated is not None
        assert (over.violated.name, over.violated.counter) == ("tpm", "key:1:tpm")
        assert over.violated.message == "tpm limit exceeded: 6/5"
        small = await limiter.acquire([], [TokenLimit("tpm", "key:2:tpm", 3)])
        assert small.tokens is not None
        assert small.tokens.limit == 1  # 3 // 2


async def test_local_strict_holds_a_token_limit_for_its_window_then_gives_the_share() -> None:
    clock = ManualClock()
    tpm = TokenLimit("tpm", "key:1:tpm", 10, window=1.0)
    async with unreachable(FailurePolicy.LOCAL_STRICT, replicas=2, clock=clock) as limiter:
        refused = await limiter.acquire([], [tpm])
        assert (refused.allowed, refused.violated, refused.degraded) == (False, None, True)
        assert refused.retry_after == 1.0  # one whole window from the loss, for tokens too
        clock.advance(0.25)
        assert (await limiter.acquire([], [tpm])).retry_after == 0.75
        clock.advance(0.75)
        after = await limiter.acquire([], [tpm])
        assert after.allowed
        assert after.tokens is not None
        assert after.tokens.limit == 5


async def test_deny_asks_to_retry_after_a_second_at_least() -> None:
    async with unreachable(FailurePolicy.DENY) as limiter:
        refused = await limiter.acquire([], [TokenLimit("tpm", "key:1:tpm", 10)])
        assert (refused.allowed, refused.retry_after, refused.degraded) == (False, 1.0, True)


async def test_a_charge_of_nothing_is_no_error_and_a_negative_one_is_refused() -> None:
    tpm = TokenLimit("tpm", "key:1:tpm", 10)
    async with unreachable(FailurePolicy.LOCAL) as limiter:
        await limiter.charge([tpm], 0)
        assert limiter.available  # nothing was sent, so nothing found Redis gone
        with pytest.raises(ValueError, match=r"^cannot charge a negative number of tokens \(-1\)$"):
            await limiter.charge([tpm], -1)


async def test_closing_stops_the_health_probe() -> None:
    async with unreachable(FailurePolicy.ALLOW) as limiter:
        await limiter.start()
        assert len(asyncio.all_tasks()) > 1  # the probe runs beside this test
    assert asyncio.all_tasks() == {asyncio.current_task()}
