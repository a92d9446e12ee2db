"""MemoryLimiter's choices at their edges, on a clock the tests move: which limit a quota reports
when several tie (fewest remaining, then the smaller limit, then the first given), which violation
a tie on the wait reports, the exact reset of unused limits, the ``exact_max`` boundary, merged
entries, and a lazy sweep that runs out of budget mid-heap (#18: the survivors of mutation testing
in ``ratelimit/memory.py``)."""

from __future__ import annotations

import pytest

from keyplane.ratelimit import ManualClock, MemoryLimiter, Quota, RequestLimit, TokenLimit

START = 1000.0  # every limiter below starts here; dyadic steps keep the clock sums exact


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


def charged(clock: ManualClock, tokens: list[TokenLimit], amount: int) -> MemoryLimiter:
    """A fresh limiter (on a fresh clock at START) with ``amount`` charged to every limit."""
    clock.now = START
    limiter = MemoryLimiter(clock=clock)
    limiter.charge_now(tokens, amount)
    return limiter


# A charge at START counts until its one-second bucket ends, START + 1, plus the window.


def test_a_token_tie_on_remaining_goes_to_the_smaller_limit_in_either_order(
    clock: ManualClock,
) -> None:
    small = TokenLimit("tpm", "small", 10)  # 5 used, 5 left
    large = TokenLimit("tpm", "large", 20)  # 15 used, 5 left
    for order in ([small, large], [large, small]):
        limiter = charged(clock, [small], 5)
        limiter.charge_now([large], 15)
        decision = limiter.acquire_now([], order)
        assert decision.tokens == Quota(limit=10, remaining=5, reset_after=61.0)


def test_a_looser_later_token_limit_never_displaces_a_tighter_one(clock: ManualClock) -> None:
    tight = TokenLimit("tpm", "tight", 100)  # 95 used, 5 left
    loose = TokenLimit("tpm", "loose", 10)  # a smaller limit but 10 left
    limiter = charged(clock, [tight], 95)
    assert limiter.acquire_now([], [tight, loose]).tokens == Quota(100, 5, 61.0)


def test_a_token_tie_on_remaining_and_limit_goes_to_the_first_given(clock: ManualClock) -> None:
    minute = TokenLimit("tpm", "minute", 10)
    hour = TokenLimit("tph", "hour", 10, 3600.0)  # minute-wide buckets: START's ends at 1020
    # Both 5 of 10 used; they differ only in when their charge leaves: 61 s or 3620 s from now.
    for order, reset in (([minute, hour], 61.0), ([hour, minute], 3620.0)):
        limiter = charged(clock, [minute, hour], 5)
        assert limiter.acquire_now([], order).tokens == Quota(10, 5, reset)


def fresh_with(clock: ManualClock, admissions: int, lim: RequestLimit) -> MemoryLimiter:
    clock.now = START
    limiter = MemoryLimiter(clock=clock)
    for _ in range(admissions):
        assert limiter.acquire_now([lim]).allowed
    return limiter


def test_an_admitted_requests_tie_on_remaining_goes_to_the_smaller_limit_in_either_order(
    clock: ManualClock,
) -> None:
    qps = RequestLimit("qps", "qps", 5, 1.0)  # unused: 4 left after this request
    qpm = RequestLimit("qpm", "qpm", 10, 60.0)  # 5 used: 4 left after this request
    for order in ([qps, qpm], [qpm, qps]):
        limiter = fresh_with(clock, 5, qpm)
        decision = limiter.acquire_now(order)
        assert decision.allowed
        assert decision.requests == Quota(limit=5, remaining=4, reset_after=1.0)


def test_a_looser_later_request_limit_never_displaces_a_tighter_one(clock: ManualClock) -> None:
    tight = RequestLimit("qpm", "tight", 10, 60.0)  # 7 used: 2 left after this request
    loose = RequestLimit("qps", "loose", 6, 1.0)  # a smaller limit but 5 left
    limiter = fresh_with(clock, 7, tight)
    assert limiter.acquire_now([tight, loose]).requests == Quota(10, 2, 60.0)


def test_an_admitted_requests_tie_on_remaining_and_limit_goes_to_the_first_given(
    clock: ManualClock,
) -> None:
    qps = RequestLimit("qps", "qps", 5, 1.0)
    qpm = RequestLimit("qpm", "qpm", 5, 60.0)
    for order, reset in (([qps, qpm], 1.0), ([qpm, qps], 60.0)):
        limiter = fresh_with(clock, 0, qps)
        assert limiter.acquire_now(order).requests == Quota(5, 4, reset)


def test_a_refused_requests_tie_goes_to_the_smaller_limit_then_the_first_given(
    clock: ManualClock,
) -> None:
    one = RequestLimit("qps", "one", 1, 1.0)
    two = RequestLimit("qpm", "two", 2, 60.0)
    minute = RequestLimit("rpm", "minute", 1, 60.0)
    clock.now = START
    limiter = MemoryLimiter(clock=clock)
    limiter.acquire_now([one, two, minute])
    limiter.acquire_now([two])
    clock.now = START + 0.25
    # All three are spent (none left); the quota reports the smaller limit, then the first.
    for order, expected in (
        ([one, two], Quota(1, 0, 0.75)),
        ([two, one], Quota(1, 0, 0.75)),
        ([one, minute], Quota(1, 0, 0.75)),
        ([minute, one], Quota(1, 0, 59.75)),
    ):
        decision = limiter.acquire_now(order)
        assert not decision.allowed
        assert decision.requests == expected


def test_request_quotas_of_a_request_refused_for_its_tokens(clock: ManualClock) -> None:
    qpm = RequestLimit("qpm", "qpm", 5, 60.0)
    unused = RequestLimit("qps", "unused", 2, 1.0)
    tokens = [TokenLimit("tpm", "tpm", 10)]
    limiter = charged(clock, tokens, 11)
    limiter.acquire_now([qpm])
    limiter.acquire_now([qpm])
    clock.now = START + 0.25
    # Nothing is recorded: each limit reports what it had, the unused one resetting at once.
    refused = limiter.acquire_now([unused], tokens)
    assert refused.violated is not None
    assert refused.violated.kind == "tokens"
    assert refused.requests == Quota(limit=2, remaining=2, reset_after=0.0)
    refused = limiter.acquire_now([qpm], tokens)
    assert refused.requests == Quota(limit=5, remaining=3, reset_after=59.75)


def test_a_token_violation_reports_its_own_wait(clock: ManualClock) -> None:
    limiter = charged(clock, [TokenLimit("tpm", "tpm", 10)], 11)
    clock.now = START + 0.5
    refused = limiter.acquire_now([], [TokenLimit("tpm", "tpm", 10)])
    assert refused.violated is not None
    assert refused.violated.retry_after == 60.5  # the charge leaves at START + 61
    assert refused.retry_after == 60.5


def test_token_violations_tied_on_the_wait_report_the_first_given(clock: ManualClock) -> None:
    a, b = TokenLimit("tpm", "a", 10), TokenLimit("tpm", "b", 10)
    for order in ([a, b], [b, a]):
        limiter = charged(clock, [a, b], 11)
        refused = limiter.acquire_now([], order)
        assert refused.violated is not None
        assert refused.violated.counter == order[0].counter
        assert refused.retry_after == 61.0


def test_a_token_counter_held_but_emptied_resets_at_once(clock: ManualClock) -> None:
    # A budget of one leaves "b" held (due, not yet swept) after all its charges have left.
    limiter = MemoryLimiter(clock=clock, sweep_budget=1)
    a, b = TokenLimit("tpm", "a", 10), TokenLimit("tpm", "b", 10)
    limiter.charge_now([a, b], 5)
    clock.now = START + 200.0
    decision = limiter.acquire_now([], [b])  # this call's sweep takes "a" only
    assert limiter.counter_count == 1
    assert decision.tokens == Quota(limit=10, remaining=10, reset_after=0.0)


def test_a_new_counter_is_due_for_the_sweep_a_window_after_its_first_admission(
    clock: ManualClock,
) -> None:
    limiter = MemoryLimiter(clock=clock, sweep_budget=1)
    limiter.acquire_now([RequestLimit("qps", "z", 5, 1.0)])
    clock.now = START + 0.5
    limiter.acquire_now([RequestLimit("qps", "b", 5, 1.0)])  # due at START + 1.5, not before
    clock.now = START + 1.25
    limiter.acquire_now([])  # one due counter, "z": its sweep takes it
    assert limiter.counter_count == 1


def test_a_limit_of_exactly_exact_max_is_exact(clock: ManualClock) -> None:
    limiter = MemoryLimiter(clock=clock, exact_max=3, buckets=1)  # bucketed: whole windows
    clock.now = START + 0.25
    decision = limiter.acquire_now([RequestLimit("qps", "c", 3, 1.0)])
    assert decision.requests == Quota(limit=3, remaining=2, reset_after=1.0)  # not 0.75


def test_admissions_in_one_bucket_share_one_entry(clock: ManualClock) -> None:
    limiter = MemoryLimiter(clock=clock, exact_max=10, buckets=2)  # 30 s buckets of a minute
    big = RequestLimit("rpm", "big", 1000, 60.0)
    for _ in range(100):
        assert limiter.acquire_now([big]).allowed
        clock.advance(0.125)
    # All in the bucket [990, 1020): one entry at its end, not one per admission.
    log = limiter._requests["big"]
    assert [at for at, _ in log.entries] == [1020.0]
    assert log.total == 100


def test_a_counter_emptied_by_a_refused_request_is_swept_when_due(clock: ManualClock) -> None:
    limiter = MemoryLimiter(clock=clock, sweep_budget=1)
    a = RequestLimit("qps", "a", 5, 1.0)
    b = RequestLimit("qps", "b", 5, 1.0)
    spent = RequestLimit("qph", "spent", 1, 3600.0)
    assert limiter.acquire_now([a, b, spent]).allowed
    clock.now = START + 1.0
    # This call's sweep takes "a"; "b"'s admission leaves its window, and the refusal records
    # nothing, so "b" is held with no entries until the next sweep drops it.
    assert not limiter.acquire_now([b, spent]).allowed
    assert limiter.counter_count == 2
    assert limiter.sweep() == 1
    assert limiter.counter_count == 1
