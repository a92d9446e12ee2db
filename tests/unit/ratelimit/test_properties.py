"""Property tests: MemoryLimiter against brute-force references, on random arrival times.

Times are multiples of 1/8 s and windows dyadic, so float arithmetic in the limiter and in the
references is exact and boundary cases (an admission exactly one window ago) are compared exactly.

The overload bounds used below, for a limit of N per window w and arrivals whose consecutive gaps
are at most g:

* sliding log: t[j+N] <= t[j] + w + N·g for the j-th admission t[j] — once t[j] has left, every
  arrival sees at most N-1 later admissions until N more are made, and N arrivals come within
  N·g. Hence admitted >= 1 + N·floor((last - first) / (w + N·g)).
* bucketed (width = w / B, entries counted until their bucket's end + w): the same with
  w + width in place of w; and when every bucket holds at least N arrivals, each run of B+1
  consecutive buckets admits exactly N, so admitted >= N·M/(B+1) >= (1 - 1/B)·N·(span / w)
  over M whole buckets.
"""

from __future__ import annotations

import itertools
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyplane.ratelimit import ManualClock, MemoryLimiter, RequestLimit, TokenLimit

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)

WINDOWS = st.sampled_from([0.5, 0.75, 1.0, 2.0, 2.5, 10.0])
ARRIVALS = st.lists(st.integers(0, 800), min_size=1, max_size=150).map(
    lambda ks: [k / 8 for k in sorted(ks)]
)


Outcome = tuple[float, bool, float]  # arrival time, admitted, retry_after


def run(
    limiter: MemoryLimiter, clock: ManualClock, limit: RequestLimit, times: list[float]
) -> list[Outcome]:
    """What the limiter decides for each arrival, in order."""
    out = []
    for t in times:
        clock.now = t
        decision = limiter.acquire_now([limit])
        out.append((t, decision.allowed, decision.retry_after))
    return out


def sliding_log_reference(limit: int, window: float, times: list[float]) -> list[Outcome]:
    admitted: list[float] = []
    out = []
    for t in times:
        inside = [a for a in admitted if a > t - window]
        if len(inside) < limit:
            admitted.append(t)
            out.append((t, True, 0.0))
        else:
            # The (count - limit + 1)-th oldest admission must leave before one more fits.
            out.append((t, False, inside[len(inside) - limit] + window - t))
    return out


def max_in_any_window(admitted: list[float], window: float) -> int:
    """The most admissions in any half-open window [a, a + window): the worst start is always
    an admission time, so checking those is checking every window."""
    return max((sum(1 for b in admitted if a <= b < a + window) for a in admitted), default=0)


def overload_floor(times: list[float], limit: int, period: float) -> int:
    """1 + N·floor(span / period): the admissions an overload bound guarantees (see docstring)."""
    gap = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
    return 1 + limit * math.floor((times[-1] - times[0]) / (period + limit * gap))


@PROPERTY_SETTINGS
@given(limit=st.integers(1, 8), window=WINDOWS, times=ARRIVALS)
def test_sliding_log_matches_the_reference_and_never_over_admits(
    limit: int, window: float, times: list[float]
) -> None:
    clock = ManualClock(0.0)
    got = run(MemoryLimiter(clock=clock), clock, RequestLimit("qps", "c", limit, window), times)
    assert got == sliding_log_reference(limit, window, times)
    admitted = [t for t, ok, _ in got if ok]
    assert max_in_any_window(admitted, window) <= limit
    assert len(admitted) >= overload_floor(times, limit, window)


@PROPERTY_SETTINGS
@given(limit=st.integers(1, 8), window=WINDOWS, times=ARRIVALS)
def test_sliding_log_admits_exactly_after_retry_after(
    limit: int, window: float, times: list[float]
) -> None:
    clock = ManualClock(0.0)
    limiter = MemoryLimiter(clock=clock)
    lim = RequestLimit("qps", "c", limit, window)
    for t in times:
        clock.now = t
        refused = limiter.acquire_now([lim])
        if refused.allowed:
            continue
        # Probing a refused limiter records nothing, so it can be asked again at any time.
        clock.now = t + refused.retry_after - 2.0**-10
        assert not limiter.acquire_now([lim]).allowed
        clock.now = t + refused.retry_after
        assert limiter.acquire_now([lim]).allowed
        return


@settings(max_examples=10, deadline=None)
@given(limit=st.integers(1, 25), window=WINDOWS)
def test_sliding_log_admits_at_least_95_percent_under_steady_overload(
    limit: int, window: float
) -> None:
    # Arrivals 20 times denser than the limit for 40 windows: the bound gives 1 + 38·N.
    gap = window / (20 * limit)
    times = [i * gap for i in range(40 * 20 * limit + 1)]
    clock = ManualClock(0.0)
    got = run(MemoryLimiter(clock=clock), clock, RequestLimit("qps", "c", limit, window), times)
    admitted = sum(ok for _, ok, _ in got)
    assert admitted >= 0.95 * limit * 40
    assert admitted <= limit * 41  # and, since no window holds more than N, at most 41 windows


BUCKETED = st.tuples(st.integers(1, 12), st.sampled_from([0.25, 0.5, 1.0]))


def bucketed_reference(
    limit: int, width: float, window: float, times: list[float]
) -> list[Outcome]:
    ends: list[float] = []  # each admission as of the end of its bucket
    out = []
    for t in times:
        inside = [q for q in ends if q > t - window]
        if len(inside) < limit:
            ends.append((math.floor(t / width) + 1) * width)
            out.append((t, True, 0.0))
        else:
            out.append((t, False, inside[len(inside) - limit] + window - t))
    return out


@PROPERTY_SETTINGS
@given(limit=st.integers(1, 8), shape=BUCKETED, times=ARRIVALS)
def test_bucketed_log_matches_its_reference_and_never_over_admits(
    limit: int, shape: tuple[int, float], times: list[float]
) -> None:
    buckets, width = shape
    window = buckets * width
    clock = ManualClock(0.0)
    limiter = MemoryLimiter(clock=clock, exact_max=0, buckets=buckets)
    got = run(limiter, clock, RequestLimit("rpm", "c", limit, window), times)
    assert got == bucketed_reference(limit, width, window, times)
    admitted = [t for t, ok, _ in got if ok]
    assert max_in_any_window(admitted, window) <= limit
    assert len(admitted) >= overload_floor(times, limit, window + width)


# Drawing arrivals bucket by bucket is slow to generate; that is expected, not a smell.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    limit=st.integers(1, 6),
    shape=BUCKETED,
    spans=st.integers(1, 6),
    extra=st.lists(st.integers(0, 7), min_size=1, max_size=300),
    data=st.data(),
)
def test_bucketed_log_admits_all_but_one_bucket_in_each_window_under_overload(
    limit: int,
    shape: tuple[int, float],
    spans: int,
    extra: list[int],
    data: st.DataObject,
) -> None:
    buckets, width = shape
    window = buckets * width
    whole_buckets = spans * buckets
    # Every bucket gets at least `limit` arrivals, at 1/8-bucket offsets, plus a few more.
    times: list[float] = []
    for j in range(whole_buckets):
        count = limit + extra[j % len(extra)]
        offsets = data.draw(st.lists(st.integers(0, 7), min_size=count, max_size=count))
        times += [j * width + o * width / 8 for o in sorted(offsets)]
    clock = ManualClock(0.0)
    limiter = MemoryLimiter(clock=clock, exact_max=0, buckets=buckets)
    got = run(limiter, clock, RequestLimit("rpm", "c", limit, window), times)
    admitted = sum(ok for _, ok, _ in got)
    assert admitted >= limit * whole_buckets / (buckets + 1)
    assert admitted >= (1 - 1 / buckets) * limit * spans


@PROPERTY_SETTINGS
@given(
    limit=st.integers(1, 3000),
    window=WINDOWS,
    buckets=st.sampled_from([1, 2, 4, 8]),
    ops=st.lists(
        st.tuples(st.integers(0, 800), st.one_of(st.none(), st.integers(1, 1000))),
        min_size=1,
        max_size=120,
    ),
)
def test_token_limit_matches_its_reference_and_brackets_the_true_window(
    limit: int, window: float, buckets: int, ops: list[tuple[int, int | None]]
) -> None:
    """``None`` is an admission check, a number a charge. Charges count from their real time
    until their bucket's end + window: never less than the contract's window, at most one
    bucket more."""
    width = window / buckets
    clock = ManualClock(0.0)
    limiter = MemoryLimiter(clock=clock, token_buckets=buckets)
    lim = TokenLimit("tpm", "c", limit, window)
    charges: list[tuple[float, int]] = []  # real time, tokens
    for tick, amount in sorted(ops, key=lambda op: op[0]):
        t = tick / 8
        clock.now = t
        if amount is not None:
            limiter.charge_now([lim], amount)
            charges.append((t, amount))
            continue
        used = sum(n for c, n in charges if (math.floor(c / width) + 1) * width > t - window)
        assert sum(n for c, n in charges if c > t - window) <= used
        assert used <= sum(n for c, n in charges if c > t - window - width)
        decision = limiter.acquire_now([], [lim])
        assert decision.allowed == (used <= limit)
        if decision.allowed:
            assert decision.tokens is not None
            assert decision.tokens.remaining == limit - used
        else:
            assert decision.violated is not None
            assert decision.violated.actual == used


LIMIT_SET = [
    RequestLimit("qps", "key:qps", 2, 1.0),
    RequestLimit("qpm", "key:qpm", 5, 10.0),
    RequestLimit("rps", "tm:rps", 3, 1.0),
    RequestLimit("rpm", "tm:rpm", 4, 10.0),
]


@PROPERTY_SETTINGS
@given(
    requests=st.lists(
        st.tuples(st.integers(0, 400), st.sets(st.integers(0, 3), min_size=1)),
        min_size=1,
        max_size=100,
    )
)
def test_requests_with_several_limits_are_recorded_in_all_or_none(
    requests: list[tuple[int, set[int]]],
) -> None:
    clock = ManualClock(0.0)
    limiter = MemoryLimiter(clock=clock)
    admitted: dict[str, list[float]] = {lim.counter: [] for lim in LIMIT_SET}
    for tick, which in sorted(requests, key=lambda r: r[0]):
        t = tick / 8
        clock.now = t
        limits = [LIMIT_SET[i] for i in sorted(which)]
        expected = all(
            sum(1 for a in admitted[lim.counter] if a > t - lim.window) < lim.limit
            for lim in limits
        )
        assert limiter.acquire_now(limits).allowed == expected
        if expected:
            for lim in limits:
                admitted[lim.counter].append(t)
    for lim in LIMIT_SET:
        assert max_in_any_window(admitted[lim.counter], lim.window) <= lim.limit
