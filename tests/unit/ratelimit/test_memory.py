"""MemoryLimiter with a manual clock: windows, Retry-After, quotas, limit changes, eviction."""

from __future__ import annotations

import pytest

from keyplane.ratelimit import (
    ALLOWED,
    Decision,
    ManualClock,
    MemoryLimiter,
    Quota,
    RequestLimit,
    TokenLimit,
)
from tests.support.limits import qpm, qps, tpm

# Dyadic fractions (k / 2**n) keep every clock sum below exact in binary floating point, so the
# tests can assert equalities at window boundaries.
TINY = 2.0**-20


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def limiter(clock: ManualClock) -> MemoryLimiter:
    return MemoryLimiter(clock=clock)


def admitted(limiter: MemoryLimiter, n: int, *limits: RequestLimit) -> int:
    return sum(limiter.acquire_now(limits).allowed for _ in range(n))


def test_admits_up_to_the_limit_then_refuses_with_the_violated_limit(
    limiter: MemoryLimiter,
) -> None:
    assert admitted(limiter, 20, qps(20)) == 20
    decision = limiter.acquire_now([qps(20)])
    assert not decision.allowed
    assert decision.violated is not None
    assert (decision.violated.kind, decision.violated.name) == ("requests", "qps")
    assert (decision.violated.actual, decision.violated.limit) == (20, 20)
    assert decision.violated.counter == "key:1:qps"
    assert decision.violated.message == "qps limit exceeded: 20/20"
    assert decision.requests == Quota(limit=20, remaining=0, reset_after=1.0)


def test_window_slides_instead_of_resetting_at_epoch_boundaries(
    limiter: MemoryLimiter, clock: ManualClock
) -> None:
    clock.now = 1000.75
    assert admitted(limiter, 5, qps(5)) == 5
    # A fixed window aligned on whole seconds would start afresh here and admit 5 more.
    clock.now = 1001.25
    assert admitted(limiter, 5, qps(5)) == 0
    clock.now = 1001.75 - TINY
    assert admitted(limiter, 1, qps(5)) == 0
    clock.now = 1001.75
    assert admitted(limiter, 6, qps(5)) == 5


def test_an_admission_leaves_the_window_exactly_window_seconds_later(
    limiter: MemoryLimiter, clock: ManualClock
) -> None:
    assert limiter.acquire_now([qps(1)]).allowed
    clock.advance(1.0 - TINY)
    assert not limiter.acquire_now([qps(1)]).allowed
    clock.advance(TINY)  # the window is (now - 1, now]: the first admission is out
    assert limiter.acquire_now([qps(1)]).allowed


def test_retry_after_is_exact_for_the_sliding_log(
    limiter: MemoryLimiter, clock: ManualClock
) -> None:
    for _ in range(3):
        assert limiter.acquire_now([qps(3)]).allowed
        clock.advance(0.25)
    refused = limiter.acquire_now([qps(3)])
    assert not refused.allowed
    assert refused.retry_after == 0.25
    assert refused.violated is not None
    assert refused.violated.retry_after == 0.25
    clock.advance(refused.retry_after - TINY)
    assert not limiter.acquire_now([qps(3)]).allowed
    clock.advance(TINY)
    assert limiter.acquire_now([qps(3)]).allowed


def test_retry_after_reports_the_longest_wait_among_violated_limits(
    limiter: MemoryLimiter, clock: ManualClock
) -> None:
    limits = [qps(1), qpm(2)]
    assert limiter.acquire_now(limits).allowed
    clock.advance(0.5)
    only_qps = limiter.acquire_now(limits)
    assert only_qps.violated is not None
    assert (only_qps.violated.name, only_qps.retry_after) == ("qps", 0.5)
    clock.advance(0.5)
    assert limiter.acquire_now(limits).allowed  # qpm now holds 2
    clock.advance(0.5)
    both = limiter.acquire_now(limits)
    assert both.violated is not None
    assert both.violated.name == "qpm"
    assert both.retry_after == 60.0 - 1.5
    assert both.violated.message == "qpm limit exceeded: 2/2"


def test_a_refused_request_records_nothing_in_any_limit(limiter: MemoryLimiter) -> None:
    key = qpm(10, "key:1:qpm")
    team_model = RequestLimit("rpm", "team:1:model:m:rpm", 2, 60.0)
    assert admitted(limiter, 2, key, team_model) == 2
    for _ in range(5):
        refused = limiter.acquire_now([key, team_model])
        assert refused.violated is not None
        assert refused.violated.name == "rpm"
        # The tightest quota is the exhausted team×model rpm.
        assert refused.requests == Quota(limit=2, remaining=0, reset_after=60.0)
    assert admitted(limiter, 20, key) == 8


def test_team_model_limit_exhausted_while_key_limit_refuses_records_neither(
    limiter: MemoryLimiter,
) -> None:
    key = qps(3, "key:1:qps")
    team_model = RequestLimit("rps", "team:1:model:m:rps", 3, 1.0)
    assert admitted(limiter, 3, key) == 3  # the key is full, the team×model limit is not
    assert admitted(limiter, 4, key, team_model) == 0
    other_key = qps(3, "key:2:qps")
    assert admitted(limiter, 4, other_key, team_model) == 3


def test_a_refusal_next_to_a_counter_that_just_emptied(
    limiter: MemoryLimiter, clock: ManualClock
) -> None:
    # More counters fall due at once than one call's sweep budget, so "z" is still held when
    # its only admission leaves the window.
    for i in range(20):
        limiter.acquire_now([qps(1, f"a{i}")])
    limiter.acquire_now([qps(1, "z")])
    full = qpm(1, "full")
    assert limiter.acquire_now([full]).allowed
    clock.advance(1.0)
    refused = limiter.acquire_now([qps(1, "z"), full])
    assert refused.violated is not None
    assert refused.violated.counter == "full"
    assert refused.requests == Quota(limit=1, remaining=0, reset_after=59.0)


def test_lowering_a_limit_applies_on_the_next_request(limiter: MemoryLimiter) -> None:
    assert admitted(limiter, 10, qpm(10)) == 10
    lowered = limiter.acquire_now([qpm(5)])
    assert lowered.violated is not None
    assert (lowered.violated.actual, lowered.violated.limit) == (10, 5)
    assert lowered.requests == Quota(limit=5, remaining=0, reset_after=60.0)


def test_raising_a_limit_applies_on_the_next_request_against_past_admissions(
    limiter: MemoryLimiter,
) -> None:
    assert admitted(limiter, 10, qpm(10)) == 10
    assert admitted(limiter, 10, qpm(15)) == 5


def test_retry_after_after_a_lowered_limit_waits_for_enough_admissions_to_leave(
    limiter: MemoryLimiter, clock: ManualClock
) -> None:
    for _ in range(4):
        assert limiter.acquire_now([qpm(4)]).allowed
        clock.advance(1.0)
    refused = limiter.acquire_now([qpm(2)])  # admissions at 0, 1, 2, 3 s ago+1
    # Three of the four must leave before a second admission fits: the third oldest, at +2 s.
    assert refused.retry_after == 60.0 - (4.0 - 2.0)


def test_a_limit_of_zero_is_unlimited(limiter: MemoryLimiter) -> None:
    assert admitted(limiter, 100, qps(0), qpm(50)) == 50
    decision = limiter.acquire_now([qps(0)], [tpm(0)])
    assert decision.allowed
    assert (decision.requests, decision.tokens) == (None, None)


def test_a_limit_set_to_zero_on_a_counter_with_admissions_is_unlimited(
    limiter: MemoryLimiter,
) -> None:
    assert admitted(limiter, 3, qps(3)) == 3  # the counter now holds 3 admissions
    assert admitted(limiter, 10, qps(0)) == 10
    assert not limiter.acquire_now([qps(3)]).allowed  # the unlimited ones were not recorded


def test_a_refusal_reports_the_quota_of_a_real_limit_past_a_zero_one(
    limiter: MemoryLimiter, clock: ManualClock
) -> None:
    assert admitted(limiter, 1, qpm(1)) == 1
    clock.advance(2.0)
    refused = limiter.acquire_now([qps(0), qpm(1)])
    assert not refused.allowed
    assert refused.requests == Quota(1, 0, 58.0)


def test_no_limits_is_allowed_without_quotas(limiter: MemoryLimiter) -> None:
    assert limiter.acquire_now([]) is ALLOWED


def test_quotas_report_the_tightest_request_and_token_limits(
    limiter: MemoryLimiter, clock: ManualClock
) -> None:
    requests = [qps(10), qpm(100), RequestLimit("rpm", "team:1:model:m:rpm", 12, 60.0)]
    tokens = [tpm(1000), TokenLimit("tpm", "team:1:model:m:tpm", 5000)]
    assert admitted(limiter, 3, *requests) == 3
    limiter.charge_now(tokens, 300)
    clock.advance(0.5)
    decision = limiter.acquire_now(requests, tokens)
    assert decision.allowed
    assert decision.retry_after == 0.0
    assert decision.violated is None
    # qps has 6 left, rpm 8, qpm 96; the qps admissions all leave 1 s after the newest one.
    assert decision.requests == Quota(limit=10, remaining=6, reset_after=1.0)
    # The key's tpm has 700 left; the charge counts until its 1 s bucket ends, plus 60 s.
    assert decision.tokens == Quota(limit=1000, remaining=700, reset_after=61.0 - 0.5)


def test_quota_ties_go_to_the_smaller_limit(limiter: MemoryLimiter) -> None:
    decision = limiter.acquire_now([qpm(5), qps(1)])
    assert decision.requests == Quota(limit=1, remaining=0, reset_after=1.0)


def test_tokens_admit_up_to_and_including_the_limit(limiter: MemoryLimiter) -> None:
    limiter.charge_now([tpm(1000)], 1000)
    at_limit = limiter.acquire_now([], [tpm(1000)])
    assert at_limit.allowed
    # Charged at 1000.0, counted as of the end of its 1 s bucket: until 1001.0 + 60 s.
    assert at_limit.tokens == Quota(limit=1000, remaining=0, reset_after=61.0)
    limiter.charge_now([tpm(1000)], 1)
    over = limiter.acquire_now([], [tpm(1000)])
    assert not over.allowed
    assert over.violated is not None
    assert (over.violated.kind, over.violated.name) == ("tokens", "tpm")
    assert over.violated.message == "tpm limit exceeded: 1001/1000"


def test_two_charges_over_the_limit_refuse_until_enough_tokens_age_out(
    limiter: MemoryLimiter, clock: ManualClock
) -> None:
    limiter.charge_now([tpm(1000)], 600)  # at 1000.0: its bucket ends at 1001.0
    clock.advance(10.0)
    limiter.charge_now([tpm(1000)], 600)  # bucket ends at 1011.0
    clock.advance(10.0)
    refused = limiter.acquire_now([], [tpm(1000)])
    assert refused.violated is not None
    assert refused.violated.actual == 1200
    assert refused.retry_after == 1001.0 + 60.0 - 1020.0
    clock.advance(refused.retry_after - TINY)
    assert not limiter.acquire_now([], [tpm(1000)]).allowed
    clock.advance(TINY)
    decision = limiter.acquire_now([], [tpm(1000)])
    assert decision.allowed
    assert decision.tokens is not None
    assert decision.tokens.remaining == 400


def test_a_charge_counts_for_the_window_and_at_most_one_bucket_more(
    limiter: MemoryLimiter, clock: ManualClock
) -> None:
    clock.now = 1000.25
    limiter.charge_now([tpm(10)], 11)
    clock.now = 1000.25 + 60.0  # the contract's 60 s are over, the 1 s bucket is not
    assert not limiter.acquire_now([], [tpm(10)]).allowed
    clock.now = 1001.0 + 60.0
    assert limiter.acquire_now([], [tpm(10)]).allowed


def test_finer_token_buckets_age_charges_out_closer_to_the_window(clock: ManualClock) -> None:
    limiter = MemoryLimiter(clock=clock, token_buckets=480)  # 0.125 s buckets
    clock.now = 1000.0 + 2.0**-4
    limiter.charge_now([tpm(10)], 11)
    clock.now = 1000.125 + 60.0 - TINY
    assert not limiter.acquire_now([], [tpm(10)]).allowed
    clock.now = 1000.125 + 60.0  # the bucket holding the charge has left the window
    assert limiter.acquire_now([], [tpm(10)]).allowed


def test_admission_does_not_record_tokens(limiter: MemoryLimiter) -> None:
    for _ in range(100):
        assert limiter.acquire_now([qpm(1000)], [tpm(10)]).allowed
    decision = limiter.acquire_now([], [tpm(10)])
    assert decision.tokens == Quota(limit=10, remaining=10, reset_after=0.0)


def test_charge_goes_to_every_token_limit(limiter: MemoryLimiter) -> None:
    key, team_model = tpm(1000), TokenLimit("tpm", "team:1:model:m:tpm", 500)
    limiter.charge_now([key, team_model], 501)
    decision = limiter.acquire_now([], [key, team_model])
    assert decision.violated is not None
    assert decision.violated.counter == "team:1:model:m:tpm"
    assert decision.tokens == Quota(limit=500, remaining=0, reset_after=61.0)
    assert limiter.acquire_now([], [key]).tokens == Quota(
        limit=1000, remaining=499, reset_after=61.0
    )


def test_token_limit_refusal_records_no_request(limiter: MemoryLimiter) -> None:
    limiter.charge_now([tpm(10)], 11)
    assert admitted(limiter, 5, qpm(5)) == 5  # without the token limit: the qpm is untouched
    assert not limiter.acquire_now([qpm(6)], [tpm(10)]).allowed
    assert admitted(limiter, 1, qpm(6)) == 1


def test_charge_rejects_negative_and_ignores_zero(limiter: MemoryLimiter) -> None:
    with pytest.raises(ValueError, match="negative"):
        limiter.charge_now([tpm(10)], -1)
    limiter.charge_now([tpm(10)], 0)
    assert limiter.counter_count == 0


@pytest.mark.parametrize(("limit", "window"), [(-1, 1.0), (1, 0.0), (1, -1.0), (1, float("nan"))])
def test_limits_refuse_nonsense(limit: int, window: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        RequestLimit("qps", "c", limit, window)
    with pytest.raises(ValueError, match="must be"):
        TokenLimit("tpm", "c", limit, window)


def test_bucketed_limits_never_over_admit_and_refill_per_bucket(clock: ManualClock) -> None:
    limiter = MemoryLimiter(clock=clock, exact_max=10, buckets=60)
    big = RequestLimit("rpm", "team:1:model:m:rpm", 20, 60.0)  # over exact_max: 1 s buckets
    clock.now = 1000.5
    assert admitted(limiter, 25, big) == 20
    refused = limiter.acquire_now([big])
    # The admissions count as if made at their bucket's end, 1001.0.
    assert refused.retry_after == 1001.0 + 60.0 - 1000.5
    clock.now = 1061.0 - TINY
    assert admitted(limiter, 1, big) == 0
    clock.now = 1061.0
    assert admitted(limiter, 25, big) == 20
    assert len(limiter._requests[big.counter].entries) <= 61


def test_a_limit_crossing_into_the_bucketed_range_keeps_its_history(clock: ManualClock) -> None:
    limiter = MemoryLimiter(clock=clock, exact_max=10)
    assert admitted(limiter, 8, RequestLimit("rpm", "c", 8, 60.0)) == 8
    clock.advance(30.0)
    assert admitted(limiter, 20, RequestLimit("rpm", "c", 12, 60.0)) == 4
    clock.advance(30.0 - TINY)
    assert admitted(limiter, 20, RequestLimit("rpm", "c", 8, 60.0)) == 0


def test_sliding_log_memory_is_bounded_by_the_limit(
    limiter: MemoryLimiter, clock: ManualClock
) -> None:
    for _ in range(1000):
        limiter.acquire_now([qps(5)])
        clock.advance(2.0**-6)
    assert len(limiter._requests["key:1:qps"].entries) <= 5


def test_token_memory_is_bounded_by_the_bucket_count(
    limiter: MemoryLimiter, clock: ManualClock
) -> None:
    for _ in range(2000):
        limiter.charge_now([tpm(10**9)], 7)
        clock.advance(0.125)
    assert len(limiter._tokens["key:1:tpm"].entries) <= 61


def test_sweep_drops_counters_whose_entries_all_left_the_window(
    limiter: MemoryLimiter, clock: ManualClock
) -> None:
    for i in range(10_000):  # at 1000.0
        limiter.acquire_now([qps(5, f"key:{i}:qps"), qpm(50, f"key:{i}:qpm")])
    limiter.charge_now([tpm(100, "key:0:tpm")], 10)  # counts until 1001.0 + 60
    assert limiter.counter_count == 20_001
    clock.now = 1002.0
    assert limiter.sweep() == 10_000  # the qps counters; the qpm ones are still in their window
    assert limiter.counter_count == 10_001
    assert limiter.acquire_now([qpm(50, "key:1:qpm")]).allowed
    clock.now = 1061.5
    assert limiter.sweep() == 10_000  # 9,999 qpm counters and the tpm one
    assert limiter.counter_count == 1  # key:1:qpm, touched again at 1002.0
    clock.now = 1062.0
    assert limiter.sweep() == 1
    assert limiter.counter_count == 0


def test_lazy_sweep_on_acquire_reclaims_idle_counters_without_a_full_sweep(
    limiter: MemoryLimiter, clock: ManualClock
) -> None:
    for i in range(1000):
        limiter.acquire_now([qps(5, f"key:{i}:qps")])
    clock.advance(1.0)
    for _ in range(1000 // 16 + 1):  # each call inspects at most 16 due counters
        limiter.acquire_now([qps(5, "hot")])
    assert limiter.counter_count == 1


def test_evicted_counter_starts_empty(limiter: MemoryLimiter, clock: ManualClock) -> None:
    assert admitted(limiter, 3, qps(3)) == 3
    clock.advance(1.0)
    assert limiter.sweep() == 1
    assert admitted(limiter, 4, qps(3)) == 3


async def test_async_acquire_and_charge_match_the_sync_path(limiter: MemoryLimiter) -> None:
    decisions = [await limiter.acquire([qps(2)], [tpm(5)]) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    await limiter.charge([tpm(5)], 6)
    refused: Decision = await limiter.acquire([], [tpm(5)])
    assert refused.violated is not None
    assert refused.violated.name == "tpm"
    await limiter.aclose()


def test_by_default_limits_up_to_1000_are_exact_and_larger_ones_use_60_buckets(
    limiter: MemoryLimiter, clock: ManualClock
) -> None:
    clock.advance(0.25)
    exact = limiter.acquire_now([RequestLimit("qpm", "a", 1000, 60.0)])
    bucketed = limiter.acquire_now([RequestLimit("qpm", "b", 1001, 60.0)])
    assert exact.requests == Quota(limit=1000, remaining=999, reset_after=60.0)
    # Admitted at 1000.25 s, counted at the end of its 1 s bucket (a sixtieth of the window).
    assert bucketed.requests == Quota(limit=1001, remaining=1000, reset_after=60.75)
