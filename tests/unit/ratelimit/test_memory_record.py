"""MemoryLimiter.record_now (an admission decided elsewhere, e.g. by Redis, that later local
decisions must count) and the lazy sweep's budget, on a clock the tests move."""

from __future__ import annotations

import pytest

from keyplane.ratelimit import ManualClock, MemoryLimiter, RequestLimit, TokenLimit

TINY = 2.0**-20  # dyadic: clock sums stay exact


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


def admitted(limiter: MemoryLimiter, n: int, *limits: RequestLimit) -> int:
    return sum(limiter.acquire_now(limits).allowed for _ in range(n))


def test_a_recorded_admission_counts_against_later_decisions_until_it_leaves_the_window(
    clock: ManualClock,
) -> None:
    limiter = MemoryLimiter(clock=clock)
    qps = RequestLimit("qps", "key:1:qps", 3, 1.0)
    limiter.record_now([qps])
    clock.advance(0.5)
    limiter.record_now([qps])
    assert admitted(limiter, 5, qps) == 1
    refused = limiter.acquire_now([qps])
    assert refused.violated is not None
    assert refused.violated.actual == 3
    assert refused.retry_after == 0.5  # the first record, at 1000.0, leaves at 1001.0
    clock.now = 1001.0 - TINY
    assert admitted(limiter, 1, qps) == 0
    clock.now = 1001.0
    assert admitted(limiter, 2, qps) == 1


def test_recording_never_refuses_and_records_past_the_limit(clock: ManualClock) -> None:
    limiter = MemoryLimiter(clock=clock)
    one = RequestLimit("qps", "k", 1, 1.0)
    for _ in range(3):
        limiter.record_now([one])
    refused = limiter.acquire_now([one])
    assert refused.violated is not None
    assert refused.violated.actual == 3
    assert limiter.counter_count == 1


def test_recording_skips_unlimited_limits_and_records_every_other(clock: ManualClock) -> None:
    limiter = MemoryLimiter(clock=clock)
    unlimited = RequestLimit("qps", "free", 0, 1.0)
    a, b = RequestLimit("qps", "a", 1, 1.0), RequestLimit("qpm", "b", 1, 60.0)
    limiter.record_now([unlimited, a, b])
    assert limiter.counter_count == 2
    assert not limiter.acquire_now([a]).allowed
    assert not limiter.acquire_now([b]).allowed


def test_a_bucketed_limit_records_at_its_bucket_end(clock: ManualClock) -> None:
    limiter = MemoryLimiter(clock=clock, exact_max=2, buckets=4)  # 15 s buckets of a minute
    big = RequestLimit("rpm", "big", 3, 60.0)
    at_max = RequestLimit("rpm", "at", 2, 60.0)  # limit == exact_max: exact
    clock.now = 1001.0
    for _ in range(3):
        limiter.record_now([big, at_max])
    refused = limiter.acquire_now([big])
    # Recorded as if at 1005.0 (the end of the bucket [990, 1005)), so it leaves at 1065.0.
    assert refused.retry_after == 1065.0 - 1001.0
    exact = limiter.acquire_now([at_max])
    assert exact.retry_after == 60.0  # recorded at 1001.0 itself
    clock.now = 1065.0 - TINY
    assert admitted(limiter, 1, big) == 0
    clock.now = 1065.0
    assert admitted(limiter, 3, big) == 3


def test_recording_sweeps_due_counters_within_its_budget(clock: ManualClock) -> None:
    limiter = MemoryLimiter(clock=clock, sweep_budget=2)
    for i in range(5):
        limiter.acquire_now([RequestLimit("qps", f"old:{i}", 5, 1.0)])
    clock.advance(1.0)
    limiter.record_now([RequestLimit("qps", "new", 5, 1.0)])
    assert limiter.counter_count == 4  # 2 of the 5 idle ones went, "new" came
    limiter.record_now([])
    assert limiter.counter_count == 2
    limiter.charge_now([TokenLimit("tpm", "t", 10)], 0)  # charges sweep too, even of nothing
    assert limiter.counter_count == 1


def test_a_decision_sweeps_no_more_than_its_budget(clock: ManualClock) -> None:
    limiter = MemoryLimiter(clock=clock, sweep_budget=3)
    for i in range(10):
        limiter.acquire_now([RequestLimit("qps", f"old:{i}", 5, 1.0)])
    clock.advance(1.0)
    assert limiter.acquire_now([]).allowed  # a call without limits still sweeps
    assert limiter.counter_count == 7
    limiter.acquire_now([], [TokenLimit("tpm", "t", 10)])
    assert limiter.counter_count == 4
    assert limiter.sweep() == 4  # a full sweep has no budget
    assert limiter.counter_count == 0


def test_budgets_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"^sweep_budget must be >= 1$"):
        MemoryLimiter(sweep_budget=0)
    with pytest.raises(ValueError, match=r"^buckets and token_buckets must be >= 1$"):
        MemoryLimiter(buckets=0)
    with pytest.raises(ValueError, match=r"^buckets and token_buckets must be >= 1$"):
        MemoryLimiter(token_buckets=0)
    assert MemoryLimiter(sweep_budget=1, buckets=1, token_buckets=1).counter_count == 0


def test_one_recorded_admission_is_one_unit_in_a_bucketed_limit(clock: ManualClock) -> None:
    limiter = MemoryLimiter(clock=clock, exact_max=2, buckets=4)
    big = RequestLimit("rpm", "big", 3, 60.0)
    limiter.record_now([big])
    assert admitted(limiter, 5, big) == 2


def test_charges_skip_unlimited_token_limits_and_charge_the_rest(clock: ManualClock) -> None:
    limiter = MemoryLimiter(clock=clock)
    free, one = TokenLimit("tpm", "free", 0), TokenLimit("tpm", "one", 1)
    limiter.charge_now([free, one], 5)
    assert limiter.counter_count == 1
    refused = limiter.acquire_now([], [one])
    assert refused.violated is not None
    assert (refused.violated.counter, refused.violated.actual) == ("one", 5)


def test_a_counter_emptied_by_a_refused_request_stays_usable(clock: ManualClock) -> None:
    limiter = MemoryLimiter(clock=clock)
    short = RequestLimit("qps", "short", 5, 1.0)
    full = RequestLimit("qpm", "full", 1, 60.0)
    # Written first with a 10 s window, the counter is not due for the sweep before 1010.
    assert limiter.acquire_now([RequestLimit("qps", "short", 5, 10.0), full]).allowed
    clock.advance(2.0)
    # short's entry expires during the check, full refuses: short's log is left empty.
    assert not limiter.acquire_now([short, full]).allowed
    assert not limiter._requests["short"].entries
    decision = limiter.acquire_now([short])
    assert decision.allowed
    assert decision.requests is not None
    assert decision.requests.remaining == 4


def test_a_bucket_holding_more_units_than_the_clock_reads_still_expires(
    clock: ManualClock,
) -> None:
    # 1,500 admissions merged into one bucket entry; the clock reads 1,062 when it must go.
    limiter = MemoryLimiter(clock=clock, exact_max=1000, buckets=60)
    big = RequestLimit("rpm", "big", 1500, 60.0)
    assert admitted(limiter, 1500, big) == 1500
    clock.now = 1062.0
    assert admitted(limiter, 1, big) == 1


def test_a_charge_sweeps_no_more_than_its_budget(clock: ManualClock) -> None:
    limiter = MemoryLimiter(clock=clock, sweep_budget=2)
    for i in range(5):
        limiter.charge_now([TokenLimit("tpm", f"old:{i}", 10, 1.0)], 1)
    clock.advance(2.0)  # past the charges' bucket end + window
    limiter.charge_now([], 0)
    assert limiter.counter_count == 3


def test_the_reported_violation_is_the_longest_wait_and_the_first_on_a_tie(
    clock: ManualClock,
) -> None:
    limiter = MemoryLimiter(clock=clock)
    minute, second = RequestLimit("qpm", "m", 1, 60.0), RequestLimit("qps", "s", 1, 1.0)
    other = RequestLimit("qps", "s2", 1, 1.0)
    assert limiter.acquire_now([minute, second, other]).allowed
    refused = limiter.acquire_now([minute, second, other])
    assert refused.violated is not None
    assert (refused.violated.counter, refused.retry_after) == ("m", 60.0)
    tie = limiter.acquire_now([second, other])
    assert tie.violated is not None
    assert (tie.violated.counter, tie.retry_after) == ("s", 1.0)


def test_a_token_violation_is_reported_when_it_waits_longest_and_only_then(
    clock: ManualClock,
) -> None:
    limiter = MemoryLimiter(clock=clock)
    second, minute = RequestLimit("qps", "s", 1, 1.0), RequestLimit("qpm", "m", 1, 60.0)
    long_tokens, short_tokens = TokenLimit("tpm", "t", 1, 60.0), TokenLimit("tps", "u", 1, 1.0)
    assert limiter.acquire_now([second, minute]).allowed
    limiter.charge_now([long_tokens, short_tokens], 5)
    by_tokens = limiter.acquire_now([second], [long_tokens])
    assert by_tokens.violated is not None
    assert (by_tokens.violated.kind, by_tokens.violated.counter) == ("tokens", "t")
    by_requests = limiter.acquire_now([minute], [short_tokens])
    assert by_requests.violated is not None
    assert (by_requests.violated.kind, by_requests.violated.counter) == ("requests", "m")


def test_an_unlimited_token_limit_does_not_hide_the_next_one(clock: ManualClock) -> None:
    limiter = MemoryLimiter(clock=clock)
    one = TokenLimit("tpm", "one", 1)
    limiter.charge_now([one], 5)
    refused = limiter.acquire_now([], [TokenLimit("tpm", "free", 0), one])
    assert refused.violated is not None
    assert refused.violated.counter == "one"


def test_a_token_counter_emptied_by_a_check_stays_usable(clock: ManualClock) -> None:
    limiter = MemoryLimiter(clock=clock)
    limiter.charge_now([TokenLimit("tpm", "t", 10, 10.0)], 5)  # not due for the sweep soon
    clock.advance(2.0)
    short = TokenLimit("tpm", "t", 10, 1.0)
    assert limiter.acquire_now([], [short]).allowed  # the charge leaves the 1 s window
    assert not limiter._tokens["t"].entries
    again = limiter.acquire_now([], [short])
    assert again.allowed
    assert again.tokens is not None
    assert again.tokens.remaining == 10
