"""RedisLimiter when its Redis dies and comes back: the failure policy, its counter, recovery.

Each test runs its own ``redis-server`` so that killing it disturbs nothing else.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from keyplane.ratelimit import (
    FailurePolicy,
    ManualClock,
    RedisLimiter,
    RequestLimit,
    TokenLimit,
)
from tests.contract.ratelimit_fixtures import RedisServer, require_redis_server


@pytest.fixture
def server() -> Iterator[RedisServer]:
    server = RedisServer(require_redis_server())
    server.start()
    yield server
    server.close()


def failures_metric(policy: FailurePolicy) -> float:
    value = REGISTRY.get_sample_value("keyplane_ratelimit_failures_total", {"policy": policy.value})
    return value or 0.0


def qpm(limit: int, counter: str = "key:1:qpm") -> RequestLimit:
    return RequestLimit("qpm", counter, limit, 60.0)


async def wait_until_shared_again(limiter: RedisLimiter, timeout: float = 10.0) -> None:
    """Acquire on a roomy counter until a decision comes from Redis again."""
    roomy = qpm(10**6, "probe")
    deadline = time.monotonic() + timeout
    while (await limiter.acquire([roomy])).degraded:
        assert time.monotonic() < deadline, "the limiter never went back to Redis"
        await asyncio.sleep(0.01)  # polling a condition with a deadline


@pytest.mark.parametrize("policy", list(FailurePolicy))
async def test_policy_applies_while_redis_is_down_and_redis_rules_again_after(
    server: RedisServer, policy: FailurePolicy
) -> None:
    # A killed server refuses connections at once, so a generous timeout costs nothing here and
    # keeps a loaded machine's slow replies from counting as outages while Redis is up.
    limiter = RedisLimiter.from_url(
        server.url,
        timeout=10.0,
        policy=policy,
        replicas=2,
        retry_interval=0.05,
        prefix=f"test:{uuid.uuid4().hex}:",
    )
    try:
        assert [(await limiter.acquire([qpm(10)])).allowed for _ in range(3)] == [True] * 3
        assert limiter.failures == 0
        assert limiter.available

        server.stop()
        metric_before = failures_metric(policy)
        decisions = [await limiter.acquire([qpm(10, "key:2:qpm")]) for _ in range(20)]
        await limiter.charge([TokenLimit("tpm", "key:2:tpm", 1000)], 5)  # must not raise
        assert all(d.degraded for d in decisions)
        assert not limiter.available
        admitted = sum(d.allowed for d in decisions)
        if policy is FailurePolicy.ALLOW:
            assert admitted == 20
        elif policy is FailurePolicy.DENY:
            assert admitted == 0
            assert all(d.violated is None and d.retry_after > 0 for d in decisions)
        else:
            assert admitted == 10 // 2  # the limit divided among the replicas
            refused = decisions[-1]
            assert refused.violated is not None
            assert refused.violated.message == "qpm limit exceeded: 5/5"
        assert limiter.failures == 20
        assert failures_metric(policy) - metric_before == 20

        server.start()  # same port
        await wait_until_shared_again(limiter)
        assert limiter.available
        failures = limiter.failures
        fresh = [await limiter.acquire([qpm(3, "key:3:qpm")]) for _ in range(10)]
        assert sum(d.allowed for d in fresh) == 3
        assert not any(d.degraded for d in fresh)
        assert limiter.failures == failures
    finally:
        await limiter.aclose()


async def test_local_policy_enforces_token_limits_divided_among_replicas(
    server: RedisServer,
) -> None:
    limiter = RedisLimiter.from_url(
        server.url,
        timeout=10.0,
        policy=FailurePolicy.LOCAL,
        replicas=3,
        prefix=f"test:{uuid.uuid4().hex}:",
    )
    tokens = [TokenLimit("tpm", "key:1:tpm", 1000)]
    try:
        server.stop()
        await limiter.charge(tokens, 333)  # the local limit is 1000 // 3 = 333
        assert (await limiter.acquire([], tokens)).allowed
        await limiter.charge(tokens, 1)
        refused = await limiter.acquire([], tokens)
        assert refused.degraded
        assert refused.violated is not None
        assert refused.violated.message == "tpm limit exceeded: 334/333"
    finally:
        await limiter.aclose()


async def test_a_down_redis_is_probed_at_most_once_per_retry_interval(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Redis.from_url(
        server.url, socket_timeout=10.0, socket_connect_timeout=10.0, retry=Retry(NoBackoff(), 0)
    )
    calls = 0
    evalsha = client.evalsha

    async def counting_evalsha(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return await evalsha(*args)

    monkeypatch.setattr(client, "evalsha", counting_evalsha)
    clock = ManualClock(0.0)
    limiter = RedisLimiter(
        client,
        policy=FailurePolicy.ALLOW,
        retry_interval=1.0,
        clock=clock,
        prefix=f"test:{uuid.uuid4().hex}:",
    )
    try:
        assert not (await limiter.acquire([qpm(10)])).degraded  # also loads the script
        calls = 0
        server.stop()
        assert (await limiter.acquire([qpm(10)])).degraded  # this one found Redis down
        assert calls == 1
        for _ in range(50):
            assert (await limiter.acquire([qpm(10)])).degraded
        await limiter.charge([TokenLimit("tpm", "key:1:tpm", 10)], 5)
        assert calls == 1  # no attempt within the retry interval
        clock.advance(1.0)
        decisions = await asyncio.gather(*(limiter.acquire([qpm(10)]) for _ in range(20)))
        assert all(d.degraded for d in decisions)
        assert calls == 2  # one probe, the others took the policy meanwhile
        assert limiter.failures == 71
    finally:
        await limiter.aclose()
        await client.aclose()
