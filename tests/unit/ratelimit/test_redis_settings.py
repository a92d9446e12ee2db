"""RedisLimiterSettings refuses what it cannot run with, word for word, and accepts each bound
(#18: ``RedisLimiterSettings.__post_init__``'s edges and messages survived)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from keyplane.ratelimit import FailurePolicy, RedisLimiterSettings


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 0}, "replicas must be >= 1, got 0"),
        ({"buckets": 0}, "buckets and token_buckets must be >= 1"),
        ({"token_buckets": 0}, "buckets and token_buckets must be >= 1"),
        ({"timeout": 0.0}, "timeout must be > 0 seconds"),
        ({"probe_min": 0.0}, "probe_min must be > 0 seconds"),
        ({"heartbeat": 0.0}, "heartbeat must be > 0 seconds"),
        ({"probe_min": 0.5, "probe_max": 0.4}, "probe_max must be >= probe_min"),
    ],
)
def test_each_refusal_says_what_is_wrong(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        RedisLimiterSettings(**values)


def test_each_bound_itself_is_accepted() -> None:
    settings = RedisLimiterSettings(
        policy="deny",  # type: ignore[arg-type]  # a string from a config file
        replicas=1,
        buckets=1,
        token_buckets=1,
        probe_min=0.3,
        probe_max=0.3,
    )
    assert settings.policy is FailurePolicy.DENY
    assert (settings.buckets, settings.token_buckets) == (1, 1)
    assert settings.probe_max == settings.probe_min
