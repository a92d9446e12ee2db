"""The shared pieces of keyplane.ratelimit: Tally (how every backend but memory builds a Decision),
the limit value types' checks, ManualClock, and ScaledWindows.

The memory backend inlines Tally's rules in its fast path (tests/unit/ratelimit/test_memory.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from keyplane.ratelimit import (
    ALLOWED,
    Decision,
    ManualClock,
    Quota,
    RequestLimit,
    ScaledWindows,
    TokenLimit,
    Violation,
)
from keyplane.ratelimit.base import Tally, active, active_tokens
from tests.support.limits import qps


def exactly(message: str) -> str:
    """A ``match`` pattern for this whole message and nothing else."""
    return f"^{re.escape(message)}$"


def test_an_empty_tally_admits_with_no_quota() -> None:
    assert Tally().decision() == ALLOWED
    assert Tally().decision() == Decision(True, 0.0, None, None, None)


def test_tally_keeps_the_request_limit_with_fewest_remaining_after_the_decision() -> None:
    tally = Tally()
    tally.request(10, 3, 0.5)  # 7 left
    tally.request(100, 98, 0.25)  # 2 left: tighter, though its limit is larger
    tally.request(5, 1, 0.75)  # 4 left
    assert tally.decision().requests == Quota(100, 2, 0.25)


def test_tally_breaks_request_ties_by_the_smaller_limit_then_the_first_given() -> None:
    tally = Tally()
    tally.request(10, 8, 0.5)  # 2 left
    tally.request(4, 2, 0.25)  # 2 left, smaller limit: wins
    tally.request(4, 2, 0.75)  # the same again: the first stays
    tally.request(20, 18, 0.125)  # 2 left, larger limit
    assert tally.decision().requests == Quota(4, 2, 0.25)


def test_tally_counts_a_request_limit_at_or_over_its_limit_as_none_remaining() -> None:
    tally = Tally()
    tally.request(5, 7, 1.0)
    assert tally.decision().requests == Quota(5, 0, 1.0)
    exact = Tally()
    exact.request(5, 5, 1.0)
    assert exact.decision().requests == Quota(5, 0, 1.0)
    under = Tally()
    under.request(5, 4, 1.0)
    assert under.decision().requests == Quota(5, 1, 1.0)


def test_tally_keeps_the_tightest_token_limit_by_the_same_rules() -> None:
    tally = Tally()
    tally.token(1000, 100, 30.0)  # 900 left
    tally.token(500, 450, 20.0)  # 50 left
    tally.token(60, 10, 10.0)  # 50 left, smaller limit: wins
    tally.token(60, 10, 5.0)  # a tie on both: the first stays
    assert tally.decision().tokens == Quota(60, 50, 10.0)
    tally.token(800, 900, 1.0)  # over its limit: 0 left, tightest
    assert tally.decision().tokens == Quota(800, 0, 1.0)
    at_limit = Tally()
    at_limit.token(100, 100, 2.0)
    assert at_limit.decision().tokens == Quota(100, 0, 2.0)
    partial = Tally()
    partial.token(60, 10, 10.0)
    partial.token(500, 450, 20.0)
    assert partial.decision().tokens == Quota(60, 50, 10.0)
    # Request and token quotas are kept apart.
    assert partial.decision().requests is None


def test_tally_reports_the_violation_with_the_longest_wait_and_refuses() -> None:
    tally = Tally()
    short, long_ = qps(5, "key:1:qps"), RequestLimit("qpm", "key:1:qpm", 50, 60.0)
    tally.violate("requests", short, 5, 0.5)
    tally.violate("requests", long_, 50, 30.0)
    tally.violate("tokens", TokenLimit("tpm", "key:1:tpm", 10), 12, 29.0)
    decision = tally.decision()
    assert not decision.allowed
    assert decision.retry_after == 30.0
    assert decision.violated == Violation("requests", "qpm", "key:1:qpm", 50, 50, 30.0)
    assert decision.violated.message == "qpm limit exceeded: 50/50"
    assert not decision.degraded


def test_tally_keeps_the_first_violation_on_a_tie_and_a_token_one_when_it_waits_longest() -> None:
    tally = Tally()
    tally.violate("requests", qps(5, "a"), 5, 0.5)
    tally.violate("requests", qps(5, "b"), 6, 0.5)
    assert tally.decision().violated == Violation("requests", "qps", "a", 5, 5, 0.5)
    tally.violate("tokens", TokenLimit("tpm", "t", 10), 11, 0.75)
    assert tally.decision().violated == Violation("tokens", "tpm", "t", 11, 10, 0.75)
    assert tally.decision().retry_after == 0.75


def test_a_zero_wait_violation_still_refuses() -> None:
    tally = Tally()
    tally.violate("requests", qps(1), 1, 0.0)
    decision = tally.decision()
    assert not decision.allowed
    assert decision.retry_after == 0.0
    assert decision.violated is not None


def test_active_limits_are_those_above_zero_in_order() -> None:
    limits = [qps(0, "a"), qps(3, "b"), qps(1, "c")]
    assert active(limits) == [limits[1], limits[2]]
    tokens = [TokenLimit("tpm", "a", 0), TokenLimit("tpm", "b", 1)]
    assert active_tokens(tokens) == [tokens[1]]


@pytest.mark.parametrize(
    ("limit", "window", "message"),
    [
        (-1, 1.0, "request limit 'qps': limit must be >= 0 (0 means unlimited), got -1"),
        (1, 0.0, "request limit 'qps': window must be > 0 seconds, got 0.0"),
        (1, -1.0, "request limit 'qps': window must be > 0 seconds, got -1.0"),
        (1, float("nan"), "request limit 'qps': window must be > 0 seconds, got nan"),
    ],
)
def test_request_limits_refuse_a_negative_limit_and_a_window_not_above_zero(
    limit: int, window: float, message: str
) -> None:
    with pytest.raises(ValueError, match=exactly(message)):
        RequestLimit("qps", "k", limit, window)


def test_token_limits_are_checked_alike_and_default_to_a_minute() -> None:
    with pytest.raises(
        ValueError,
        match=exactly("token limit 'tpm': limit must be >= 0 (0 means unlimited), got -5"),
    ):
        TokenLimit("tpm", "k", -5)
    with pytest.raises(
        ValueError, match=exactly("token limit 'tpm': window must be > 0 seconds, got 0.0")
    ):
        TokenLimit("tpm", "k", 5, 0.0)
    assert TokenLimit("tpm", "k", 0).window == 60.0
    assert RequestLimit("qps", "k", 0, 1e-9).limit == 0  # 0 is unlimited, a tiny window is fine


def test_manual_clock_moves_forward_only_when_told() -> None:
    clock = ManualClock(5.0)
    assert clock.monotonic() == 5.0
    clock.advance(0.0)  # standing still is allowed
    assert clock.monotonic() == 5.0
    clock.advance(2.5)
    assert clock.monotonic() == 7.5
    assert ManualClock().monotonic() == 0.0
    with pytest.raises(ValueError, match=exactly("a monotonic clock cannot go back -0.5 s")):
        clock.advance(-0.5)
    assert clock.monotonic() == 7.5


class Recorder:
    """A Limiter that records what it was asked."""

    def __init__(self) -> None:
        self.acquired: list[tuple[list[RequestLimit], list[TokenLimit]]] = []
        self.charged: list[tuple[list[TokenLimit], int]] = []
        self.closed = False

    async def acquire(
        self, requests: Sequence[RequestLimit], tokens: Sequence[TokenLimit] = ()
    ) -> Decision:
        self.acquired.append((list(requests), list(tokens)))
        return ALLOWED

    async def charge(self, tokens: Sequence[TokenLimit], amount: int) -> None:
        self.charged.append((list(tokens), amount))

    async def aclose(self) -> None:
        self.closed = True


async def test_scaled_windows_multiplies_every_window_and_nothing_else() -> None:
    inner = Recorder()
    scaled = ScaledWindows(inner, 0.5)
    assert scaled.inner is inner
    assert scaled.scale == 0.5
    tpm = TokenLimit("tpm", "key:1:tpm", 100, 60.0)
    assert await scaled.acquire([qps(5)], [tpm]) is ALLOWED
    assert inner.acquired == [
        ([RequestLimit("qps", "key:1:qps", 5, 0.5)], [TokenLimit("tpm", "key:1:tpm", 100, 30.0)])
    ]
    await scaled.acquire([qps(5)])
    assert inner.acquired[-1] == ([RequestLimit("qps", "key:1:qps", 5, 0.5)], [])
    await scaled.charge([tpm], 7)
    assert inner.charged == [([TokenLimit("tpm", "key:1:tpm", 100, 30.0)], 7)]
    await scaled.aclose()
    assert inner.closed


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_scaled_windows_refuses_a_scale_not_above_zero(scale: float) -> None:
    with pytest.raises(ValueError, match=exactly(f"scale must be > 0, got {scale}")):
        ScaledWindows(Recorder(), scale)
