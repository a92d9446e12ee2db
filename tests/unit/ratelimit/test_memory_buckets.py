"""MemoryLimiter's bucketed admissions on a clock the tests move: the bucket of a log's last
bucketed write is reused only while ``now`` is inside it and with the window it was computed for
(#11 item 6 made that a fast path); a limit crossing ``exact_max`` merges into a later bucket's
entry; and the quotas and token checks around it."""

from __future__ import annotations

from keyplane.ratelimit import ManualClock, MemoryLimiter, Quota, RequestLimit, TokenLimit

# exact_max=2, buckets=4: a limit above 2 over a 1 s window counts in 0.25 s buckets.


def limiter_at(start: float) -> tuple[MemoryLimiter, ManualClock]:
    clock = ManualClock(start)
    return MemoryLimiter(clock=clock, exact_max=2, buckets=4), clock


def test_an_admission_at_a_buckets_end_opens_the_next_bucket() -> None:
    limiter, clock = limiter_at(0.125)
    lim = RequestLimit("rps", "c", 3, 1.0)
    assert limiter.acquire_now([lim]).requests == Quota(3, 2, 1.125)  # counted at 0.25
    clock.now = 0.25  # the first bucket's end: the next bucket, counted at 0.5
    assert limiter.acquire_now([lim]).requests == Quota(3, 1, 1.25)


def test_an_admission_past_the_last_bucket_is_counted_in_its_own() -> None:
    limiter, clock = limiter_at(0.125)
    lim = RequestLimit("rps", "c", 3, 1.0)
    limiter.acquire_now([lim])
    clock.now = 0.375  # counted at 0.5, not merged into 0.25
    assert limiter.acquire_now([lim]).requests == Quota(3, 1, 1.125)


def test_a_wider_window_on_the_same_counter_computes_its_own_bucket() -> None:
    limiter, clock = limiter_at(0.125)
    limiter.acquire_now([RequestLimit("rps", "c", 3, 1.0)])  # at 0.25
    clock.now = 0.1875
    # A 2 s window has 0.5 s buckets: counted at 0.5, after the entry at 0.25.
    decision = limiter.acquire_now([RequestLimit("rps", "c", 3, 2.0)])
    assert decision.requests == Quota(3, 1, 2.3125)


def test_an_exact_admission_merges_into_a_later_buckets_entry_as_one_unit() -> None:
    limiter, clock = limiter_at(0.125)
    bucketed = RequestLimit("rps", "c", 3, 1.0)
    exact = RequestLimit("rps", "c", 2, 1.0)
    limiter.acquire_now([bucketed])  # at 0.25
    clock.now = 0.1875
    assert limiter.acquire_now([exact]).requests == Quota(2, 0, 1.0625)  # merged into 0.25
    clock.now = 0.203125
    decision = limiter.acquire_now([bucketed])  # two counted so far: the third fits
    assert decision.allowed
    assert decision.requests == Quota(3, 0, 1.046875)
    looser = RequestLimit("rps", "c", 5, 1.0)
    clock.now = 0.5
    assert limiter.acquire_now([looser]).requests == Quota(5, 1, 1.25)  # at 0.75
    clock.now = 1.25  # the three at 0.25 leave together; the one at 0.75 stays
    assert limiter.acquire_now([looser]).requests == Quota(5, 3, 1.25)


def test_a_token_limit_never_charged_does_not_end_the_token_checks() -> None:
    limiter, _ = limiter_at(0.0)
    spent = TokenLimit("tpm", "spent", 10)
    limiter.charge_now([spent], 11)
    decision = limiter.acquire_now([], [TokenLimit("tpm", "fresh", 100), spent])
    assert not decision.allowed
    assert decision.violated is not None
    assert decision.violated.counter == "spent"


def test_a_decision_reports_no_quota_of_a_kind_it_did_not_check() -> None:
    limiter, _ = limiter_at(0.0)
    tokens_only = limiter.acquire_now([], [TokenLimit("tpm", "t", 100)])
    assert tokens_only.allowed
    assert tokens_only.requests is None
    assert tokens_only.tokens == Quota(100, 100, 0.0)
    limiter.charge_now([TokenLimit("tpm", "t", 100)], 101)
    refused_tokens = limiter.acquire_now([], [TokenLimit("tpm", "t", 100)])
    assert not refused_tokens.allowed
    assert refused_tokens.requests is None
    lim = RequestLimit("rps", "r", 1, 1.0)
    assert limiter.acquire_now([lim]).tokens is None
    refused = limiter.acquire_now([lim])
    assert not refused.allowed
    assert refused.tokens is None


def test_an_admission_merged_into_a_recorded_buckets_entry_leaves_with_it_as_one_unit() -> None:
    # record_now writes a bucket's entry without the fast path's state, so the exact admission
    # below merges into it through the general path; both leave together, one unit each.
    clock = ManualClock(0.125)
    limiter = MemoryLimiter(clock=clock, exact_max=3, buckets=4)
    exact = RequestLimit("rps", "c", 3, 1.0)
    limiter.record_now([RequestLimit("rps", "c", 5, 1.0)])  # at 0.25
    clock.now = 0.1875
    assert limiter.acquire_now([exact]).requests == Quota(3, 1, 1.0625)  # merged into 0.25
    clock.now = 0.5
    assert limiter.acquire_now([exact]).requests == Quota(3, 0, 1.0)  # keeps the counter alive
    clock.now = 1.25  # the two at 0.25 leave; the one at 0.5 stays
    assert limiter.acquire_now([exact]).requests == Quota(3, 1, 1.0)


def test_a_window_changed_by_an_exact_admission_ends_the_buckets_reuse() -> None:
    limiter, clock = limiter_at(0.125)
    limiter.acquire_now([RequestLimit("rps", "c", 3, 1.0)])  # at 0.25, a 0.25 s bucket
    clock.now = 0.1875
    exact = RequestLimit("rps", "c", 2, 2.0)  # merged into 0.25; the counter's window is 2 s now
    assert limiter.acquire_now([exact]).requests == Quota(2, 0, 2.0625)
    clock.now = 0.203125
    # Bucketed over 2 s: a 0.5 s bucket, counted at 0.5, not merged into the 1 s window's bucket.
    decision = limiter.acquire_now([RequestLimit("rps", "c", 3, 2.0)])
    assert decision.requests == Quota(3, 0, 2.296875)


def test_a_window_changed_by_a_recorded_admission_ends_the_buckets_reuse() -> None:
    limiter, clock = limiter_at(0.125)
    limiter.acquire_now([RequestLimit("rps", "c", 3, 1.0)])  # at 0.25
    clock.now = 0.1875
    limiter.record_now([RequestLimit("rps", "c", 2, 2.0)])  # exact: merged into 0.25
    clock.now = 0.203125
    decision = limiter.acquire_now([RequestLimit("rps", "c", 3, 2.0)])
    assert decision.requests == Quota(3, 0, 2.296875)  # counted at 0.5


def test_a_shorter_window_expires_admissions_counted_in_one_pass() -> None:
    limiter, clock = limiter_at(0.125)
    wide = RequestLimit("rps", "c", 3, 2.0)  # 0.5 s buckets
    limiter.acquire_now([wide])  # at 0.5
    clock.now = 0.25
    assert limiter.acquire_now([wide]).requests == Quota(3, 1, 2.25)  # merged into 0.5
    clock.now = 1.5  # both left a 1 s window (the counter, on 2 s, is not swept yet)
    decision = limiter.acquire_now([RequestLimit("rps", "c", 3, 1.0)])
    assert decision.requests == Quota(3, 2, 1.25)  # none counted; this one at 1.75


def test_an_entry_leaving_inside_the_bucket_is_not_counted_after_it_left() -> None:
    limiter, clock = limiter_at(0.125)
    limiter.acquire_now([RequestLimit("rps", "c", 2, 1.0)])  # exact: at 0.125, leaves at 1.125
    clock.now = 1.0625
    bucketed = RequestLimit("rps", "c", 3, 1.0)
    assert limiter.acquire_now([bucketed]).requests == Quota(3, 1, 1.1875)  # at 1.25
    clock.now = 1.1875  # same bucket, but the entry at 0.125 has left
    assert limiter.acquire_now([bucketed]).requests == Quota(3, 1, 1.0625)
