"""MemoryLimiter's whole decision against a brute-force model, over random timelines that mix
what its one-pass admission (#11 item 6) must hand to the general path: several limits per call on
shared counters, limits moving between exact and bucketed and between windows, refusals by a
later limit after earlier ones passed, admissions recorded from elsewhere (``record_now``), and
counters dropped by the sweep.

The model keeps each counter's entries as a plain list and recomputes everything from it: an
exact admission at ``now``, a bucketed one at its bucket's end, either merged into the newest
entry when not after it; a call first drops the counters the sweep would drop, then expires each
checked counter's entries with its limit's window. Times are multiples of 1/32 s and bucket
widths dyadic, so the float arithmetic is exact on both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.ratelimit import (
    Decision,
    ManualClock,
    MemoryLimiter,
    Quota,
    RequestLimit,
    Violation,
)

EXACT_MAX = 3
BUCKETS = 4
COUNTERS = ("a", "b", "c")
WINDOWS = (1.0, 0.5, 2.0)


@dataclass
class Counter:
    window: float
    due: float
    entries: list[list[float]] = field(default_factory=list)  # [time, units], oldest first


class Model:
    def __init__(self) -> None:
        self.counters: dict[str, Counter] = {}

    def sweep(self, now: float) -> None:
        for name, c in list(self.counters.items()):
            if c.due <= now:
                idle = c.entries[-1][0] + c.window if c.entries else now
                if idle <= now:
                    del self.counters[name]
                else:
                    c.due = idle

    def expire(self, lim: RequestLimit, now: float) -> Counter | None:
        c = self.counters.get(lim.counter)
        if c is not None:
            c.entries = [e for e in c.entries if e[0] > now - lim.window]
        return c

    def record(self, lim: RequestLimit, now: float) -> float:
        c = self.counters.get(lim.counter)
        if c is None:
            c = self.counters[lim.counter] = Counter(lim.window, now + lim.window)
        c.window = lim.window
        if lim.limit <= EXACT_MAX:
            at = now
        else:
            width = lim.window / BUCKETS
            at = (math.floor(now / width) + 1) * width
        if c.entries and at <= c.entries[-1][0]:
            c.entries[-1][1] += 1
        else:
            c.entries.append([at, 1])
        return c.entries[-1][0]

    def acquire(self, limits: list[RequestLimit], now: float) -> Decision:
        self.sweep(now)
        live = [lim for lim in limits if lim.limit > 0]
        counts = {}
        violated: tuple[float, RequestLimit, int] | None = None
        for lim in live:
            c = self.expire(lim, now)
            count = counts[lim.counter] = sum(int(e[1]) for e in c.entries) if c else 0
            if c is not None and count >= lim.limit:
                # The oldest entry whose departure takes (count - limit + 1) units out.
                excess = count - lim.limit + 1
                at = next(
                    e[0]
                    for i, e in enumerate(c.entries)
                    if sum(u for _, u in c.entries[: i + 1]) >= excess
                )
                retry = at + lim.window - now
                if violated is None or retry > violated[0]:
                    violated = (retry, lim, count)
        best: Quota | None = None
        for lim in live:
            count = counts[lim.counter]
            if violated is None:
                newest = self.record(lim, now)
                remaining, reset = lim.limit - count - 1, newest + lim.window - now
            else:
                c = self.counters.get(lim.counter)
                remaining = max(lim.limit - count, 0)
                reset = c.entries[-1][0] + lim.window - now if c and count else 0.0
            if best is None or (remaining, lim.limit) < (best.remaining, best.limit):
                best = Quota(lim.limit, remaining, reset)
        if violated is None:
            return Decision(True, 0.0, None, best, None)
        retry, lim, count = violated
        return Decision(
            False,
            retry,
            Violation("requests", "rps", lim.counter, count, lim.limit, retry),
            best,
            None,
        )


# Each counter keeps its own window but now and then is given another one.
LIMIT = st.builds(
    lambda i, limit, other: RequestLimit("rps", COUNTERS[i], limit, other or WINDOWS[i]),
    st.integers(0, len(COUNTERS) - 1),
    st.sampled_from([0, 2, 4, 5, 6, 9, 9, 12]),
    st.one_of(st.just(None), st.just(None), st.just(None), st.sampled_from(WINDOWS)),
)
CALL = st.tuples(
    st.sampled_from([0, 0, 1, 1, 2, 3, 8, 40]),  # 1/32 s ticks since the previous call
    st.integers(0, 7).map(lambda n: n == 0),  # record_now instead of acquire_now
    st.lists(LIMIT, min_size=1, max_size=3, unique_by=lambda lim: lim.counter),
)


@settings(max_examples=400, deadline=None)
@given(calls=st.lists(CALL, min_size=1, max_size=80))
def test_decisions_match_a_model_that_recomputes_everything(
    calls: list[tuple[int, bool, list[RequestLimit]]],
) -> None:
    clock = ManualClock(0.0)
    limiter = MemoryLimiter(clock=clock, exact_max=EXACT_MAX, buckets=BUCKETS, sweep_budget=8)
    model = Model()
    for ticks, record, limits in calls:
        clock.now += ticks / 32
        now = clock.now
        if record:
            limiter.record_now(limits)
            model.sweep(now)
            for lim in limits:
                if lim.limit > 0:
                    model.expire(lim, now)
                    model.record(lim, now)
            continue
        got = limiter.acquire_now(limits)
        want = model.acquire(limits, now)
        assert got == want
        assert limiter.counter_count == len(model.counters)
