"""Which limiter a gateway gets, and the refusal of unshared in-memory limits across replicas."""

from __future__ import annotations

import pytest

from keyplane.gateway.server import make_limiter, shared_limiter
from keyplane.ratelimit import FailurePolicy, MemoryLimiter, RedisLimiter, ScaledWindows
from keyplane.settings import LimiterSettings, Settings


def test_one_replica_gets_memory_limits() -> None:
    assert isinstance(make_limiter(Settings(), "us-east-1"), MemoryLimiter)


@pytest.mark.parametrize(("replicas", "index"), [(2, 0), (1, 1)])
def test_several_replicas_with_memory_limits_are_refused(replicas: int, index: int) -> None:
    settings = Settings(limiter=LimiterSettings(replicas=replicas))
    with pytest.raises(SystemExit, match="each enforce the full limit"):
        make_limiter(settings, "us-east-1", index)


def test_unless_explicitly_allowed() -> None:
    settings = Settings(limiter=LimiterSettings(replicas=2, allow_unshared_replicas=True))
    assert isinstance(make_limiter(settings, "us-east-1", 1), MemoryLimiter)


async def test_redis_limits_are_prefixed_by_cluster() -> None:
    settings = Settings(limiter=LimiterSettings(backend="redis", replicas=2))
    limiter = make_limiter(settings, "eu-west-1", 1)
    assert isinstance(limiter, RedisLimiter)
    assert limiter.prefix == "keyplane:rl:eu-west-1:"
    await limiter.aclose()


async def test_redis_limiter_settings_and_the_limiter_healthz_reports_on() -> None:
    settings = Settings(
        limiter=LimiterSettings(
            backend="redis",
            replicas=2,
            failure_policy="local-strict",
            redis_timeout=0.5,
            window_scale=0.1,
        )
    )
    limiter = make_limiter(settings, "us-east-1")
    assert isinstance(limiter, ScaledWindows)
    assert limiter.scale == 0.1
    shared = shared_limiter(limiter)
    assert isinstance(shared, RedisLimiter)
    assert shared.settings.policy is FailurePolicy.LOCAL_STRICT
    assert shared.settings.timeout == 0.5
    assert shared.settings.replicas == 2
    assert shared.available  # nothing has failed yet
    await limiter.aclose()


def test_memory_limits_have_no_redis_to_report_on() -> None:
    assert shared_limiter(make_limiter(Settings(), "us-east-1")) is None
