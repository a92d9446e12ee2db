"""In-process rate limiter: sliding logs for request limits, bucketed logs for tokens.

Every counter is a :class:`_Log`: a deque of ``(time, units)`` entries, oldest first, plus their
running total. An entry counts while its time is inside the window ``(now - window, now]``.

* Request limits up to ``exact_max`` keep one entry per admission at its exact time: a sliding
  log, so "admitted iff fewer than ``limit`` admissions in ``(now - window, now]``" holds exactly
  and ``Retry-After`` is exact. Its length is bounded by the limit.
* Larger request limits, and all token limits, round each entry's time *up* to the end of its
  bucket (``window / buckets`` wide) and merge entries of one bucket. An entry then counts a little
  longer than it really should — at most one bucket — so such a limit never over-admits, admits at
  least ``buckets / (buckets + 1)`` of its limit under overload, and keeps at most ``buckets + 1``
  entries whatever the traffic.

Idle counters are dropped: each counter sits once in a heap ordered by the time its newest entry
leaves the window; every call pops a few due heap entries, and :meth:`MemoryLimiter.sweep` pops
them all.
"""

from __future__ import annotations

import heapq
import math
import sys
from collections import deque
from collections.abc import Sequence

from keyplane.ratelimit.base import (
    ALLOWED,
    Clock,
    Decision,
    Quota,
    RequestLimit,
    SystemClock,
    TokenLimit,
    Violation,
)

__all__ = ["MemoryLimiter"]

_REQUESTS = 0
_TOKENS = 1

_floor = math.floor
_NONE = sys.maxsize  # "no limit seen yet" for the tightest-quota search: above any real count


class _Log:
    """The entries of one counter still inside its window, oldest first."""

    __slots__ = ("bucket_end", "entries", "head", "total", "until", "window")

    def __init__(self, window: float) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        # Units of the newest entry not yet in its tuple (the one-pass admission adds them here
        # rather than rebuild the tuple); whatever reads the entries' units folds them in first.
        self.head = 0
        self.total = 0  # every unit counted, ``head`` included
        # The window of the last write, which decides when the sweep may drop this counter.
        self.window = window
        # The newest entry's time when it is the end of the bucket of the last bucketed
        # admission, a bucket of ``window``; and, set with it, ``until``: the earlier of that end
        # and the oldest entry's departure. Before ``until``, an admission with this window falls
        # in that bucket (it merges into the newest entry) and no entry has left the window (the
        # total is the count). A write that may change ``window`` sets ``until`` to 0.
        self.bucket_end = 0.0
        self.until = 0.0

    def expire(self, cutoff: float) -> int:
        """Drop the entries at or before ``cutoff``; return the units still counted."""
        self.fold()
        entries = self.entries
        while entries and entries[0][0] <= cutoff:
            self.total -= entries.popleft()[1]
        return self.total

    def add(self, at: float, units: int) -> None:
        """Record ``units`` at time ``at``.

        An entry earlier than the newest one (possible when a limit switches from bucketed to
        exact and the newest entry sits at a bucket's end) is merged into the newest: it then
        counts slightly longer, which is the safe direction, and the log stays sorted. Called
        after :meth:`expire`, which folds ``head`` in.
        """
        entries = self.entries
        if entries:
            last_at, last_units = entries[-1]
            if at <= last_at:
                entries[-1] = (last_at, last_units + units)
                self.total += units
                return
        entries.append((at, units))
        self.total += units

    def release(self, excess: int) -> float:
        """The time of the entry whose departure takes ``excess`` units out of the window."""
        self.fold()
        seen = 0
        for at, units in self.entries:
            seen += units
            if seen >= excess:
                return at
        raise AssertionError(f"excess {excess} exceeds the {self.total} units counted")

    def newest(self) -> float:
        return self.entries[-1][0]

    def fold(self) -> None:
        """Put ``head`` into the newest entry's tuple."""
        if self.head:
            at, units = self.entries[-1]
            self.entries[-1] = (at, units + self.head)
            self.head = 0


def _bucket_end(now: float, width: float) -> float:
    """The end of the ``width``-wide bucket holding ``now`` (strictly after ``now``)."""
    return (math.floor(now / width) + 1) * width


class MemoryLimiter:
    """Rate limits held in this process; see the module docstring for the algorithms.

    ``exact_max``: request limits up to this use the exact sliding log (memory grows with the
    limit); larger ones use ``buckets`` buckets per window. ``token_buckets``: buckets per window
    for token limits, so a charge counts for between ``window`` and ``window + window /
    token_buckets`` seconds. ``sweep_budget``: how many due counters each call may inspect, which
    bounds the latency the lazy sweep adds to one call.

    Not thread-safe: use it from one event loop (the gateway's). :meth:`acquire_now` never yields,
    which is what makes check-then-record atomic.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        exact_max: int = 1000,
        buckets: int = 60,
        token_buckets: int = 60,
        sweep_budget: int = 16,
    ) -> None:
        if buckets < 1 or token_buckets < 1:
            raise ValueError("buckets and token_buckets must be >= 1")
        if sweep_budget < 1:
            raise ValueError("sweep_budget must be >= 1")
        self._now = (clock or SystemClock()).monotonic
        self._exact_max = exact_max
        self._buckets = buckets
        self._token_buckets = token_buckets
        self._sweep_budget = sweep_budget
        self._requests: dict[str, _Log] = {}
        self._tokens: dict[str, _Log] = {}
        # (time the counter may be idle, counter, _REQUESTS|_TOKENS); one entry per live counter.
        self._due: list[tuple[float, str, int]] = []

    @property
    def counter_count(self) -> int:
        """How many counters hold state (request and token counters together)."""
        return len(self._requests) + len(self._tokens)

    def acquire_now(
        self, requests: Sequence[RequestLimit], tokens: Sequence[TokenLimit] = ()
    ) -> Decision:
        """Synchronous :meth:`acquire`: the gateway's hot path, with no coroutine to pay for."""
        # Written for speed (this runs for every request through the gateway): locals instead of
        # attribute lookups, the expiry and append of _Log inlined, no objects built for limits
        # that are not the tightest.
        now = self._now()
        due = self._due
        if due and due[0][0] <= now:
            self._sweep(now, self._sweep_budget)
        if not requests and not tokens:
            return ALLOWED
        # What Tally does for the other backends, inlined: scalars instead of a Tally object and
        # one Quota per better candidate; the same choices (see Tally for the rules).
        violated: Violation | None = None
        retry_after = 0.0
        tok_remaining = tok_limit = _NONE
        tok_reset = 0.0
        if tokens:
            token_counters = self._tokens
            for tlim in tokens:
                limit = tlim.limit
                if limit <= 0:
                    continue
                log = token_counters.get(tlim.counter)
                if log is None:  # nothing charged: all of it remains, with nothing to reset
                    if limit < tok_remaining or (limit == tok_remaining and limit < tok_limit):
                        tok_remaining = tok_limit = limit
                        tok_reset = 0.0
                    continue
                entries = log.entries
                if entries and entries[0][0] <= now - tlim.window:
                    used = log.expire(now - tlim.window)
                else:
                    used = log.total
                if used > limit:
                    retry = log.release(used - limit) + tlim.window - now
                    if violated is None or retry > retry_after:
                        violated = Violation("tokens", tlim.name, tlim.counter, used, limit, retry)
                        retry_after = retry
                remaining = limit - used if used < limit else 0
                if remaining < tok_remaining or (remaining == tok_remaining and limit < tok_limit):
                    tok_remaining, tok_limit = remaining, limit
                    tok_reset = entries[-1][0] + tlim.window - now if used else 0.0
        tok_quota = Quota(tok_limit, tok_remaining, tok_reset) if tok_limit != _NONE else None
        if violated is None:
            # The usual admission, in one pass: every limit's counter has a log before its
            # ``until`` with this window (see _Log.bucket_end): its total is its count, and this
            # admission merges into the newest entry. Each is checked and recorded in turn; if a
            # limit is not like that, or is full, the ones recorded so far are taken back (each
            # added one unit to its head) and the general path decides.
            counters = self._requests
            best_remaining = best_limit = _NONE
            best_reset = 0.0
            for lim in requests:
                limit = lim.limit
                if limit <= 0:
                    continue
                window = lim.window
                log = counters.get(lim.counter)
                if log is None or now >= log.until or window != log.window:
                    break
                count = log.total
                if count >= limit:
                    break
                log.head += 1
                log.total = count + 1
                remaining = limit - count - 1
                if remaining < best_remaining or (
                    remaining == best_remaining and limit < best_limit
                ):
                    best_remaining, best_limit = remaining, limit
                    best_reset = log.bucket_end + window - now
            else:
                return Decision(
                    True,
                    0.0,
                    None,
                    Quota(best_limit, best_remaining, best_reset) if best_limit != _NONE else None,
                    tok_quota,
                )
            for done in requests:
                if done is lim:
                    break
                if done.limit > 0:
                    log = counters[done.counter]
                    log.head -= 1
                    log.total -= 1
        return self._decide(now, requests, violated, retry_after, tok_quota)

    def _decide(
        self,
        now: float,
        requests: Sequence[RequestLimit],
        violated: Violation | None,
        retry_after: float,
        tok_quota: Quota | None,
    ) -> Decision:
        """:meth:`acquire_now` past the token checks, for any state: every request limit is
        checked first, and recorded only if all of them (and the token limits) pass."""
        counters = self._requests
        # The passes below find each log again by its counter rather than keep a list of what
        # was checked: a counter is given once per call, and a checked log's total is its count.
        for lim in requests:
            limit = lim.limit
            if limit <= 0:
                continue
            log = counters.get(lim.counter)
            if log is None:
                continue
            entries = log.entries
            if entries and entries[0][0] <= now - lim.window:
                count = log.expire(now - lim.window)
            else:
                count = log.total
            if count >= limit:
                retry = log.release(count - limit + 1) + lim.window - now
                if violated is None or retry > retry_after:
                    violated = Violation("requests", lim.name, lim.counter, count, limit, retry)
                    retry_after = retry
        if violated is None:
            exact_max = self._exact_max
            buckets = self._buckets
            for lim in requests:
                limit = lim.limit
                if limit <= 0:
                    continue
                log = self._fresh_log(counters, _REQUESTS, lim, now)
                if limit <= exact_max:
                    log.add(now, 1)
                else:
                    width = lim.window / buckets
                    at = (_floor(now / width) + 1) * width
                    log.add(at, 1)
                    if log.newest() == at:  # not merged into a later entry
                        log.bucket_end = at
                        departs = log.entries[0][0] + lim.window
                        log.until = at if at < departs else departs
        # The tightest request limit, from the counts after the decision: fewest remaining, then
        # smallest limit.
        best_remaining = best_limit = _NONE
        best_reset = 0.0
        for lim in requests:
            limit = lim.limit
            if limit <= 0:
                continue
            log = counters.get(lim.counter)
            count = log.total if log is not None else 0
            remaining = limit - count if count < limit else 0
            if remaining < best_remaining or (remaining == best_remaining and limit < best_limit):
                best_remaining, best_limit = remaining, limit
                best_reset = log.newest() + lim.window - now if log and count else 0.0
        return Decision(
            violated is None,
            retry_after,
            violated,
            Quota(best_limit, best_remaining, best_reset) if best_limit != _NONE else None,
            tok_quota,
        )

    def record_now(self, requests: Sequence[RequestLimit]) -> None:
        """Record one admission in every request limit without checking any: for an admission
        decided elsewhere (by Redis) that later local decisions must count."""
        now = self._now()
        due = self._due
        if due and due[0][0] <= now:
            self._sweep(now, self._sweep_budget)
        for lim in requests:
            if lim.limit <= 0:
                continue
            log = self._fresh_log(self._requests, _REQUESTS, lim, now)
            if lim.limit <= self._exact_max:
                log.add(now, 1)
            else:
                log.add(_bucket_end(now, lim.window / self._buckets), 1)

    def charge_now(self, tokens: Sequence[TokenLimit], amount: int) -> None:
        """Synchronous :meth:`charge`."""
        if amount < 0:
            raise ValueError(f"cannot charge a negative number of tokens ({amount})")
        now = self._now()
        due = self._due
        if due and due[0][0] <= now:
            self._sweep(now, self._sweep_budget)
        if amount == 0:
            return
        for lim in tokens:
            if lim.limit <= 0:
                continue
            log = self._fresh_log(self._tokens, _TOKENS, lim, now)
            log.add(_bucket_end(now, lim.window / self._token_buckets), amount)

    def _fresh_log(
        self, store: dict[str, _Log], kind: int, lim: RequestLimit | TokenLimit, now: float
    ) -> _Log:
        """The log of ``lim``'s counter, created (and put in the sweep heap) if new, expired if
        not: expiring before adding keeps a bucketed log within buckets + 1 entries."""
        log = store.get(lim.counter)
        if log is None:
            log = store[lim.counter] = _Log(lim.window)
            heapq.heappush(self._due, (now + lim.window, lim.counter, kind))
        else:
            log.expire(now - lim.window)
            log.window = lim.window
            log.until = 0.0
        return log

    async def acquire(
        self, requests: Sequence[RequestLimit], tokens: Sequence[TokenLimit] = ()
    ) -> Decision:
        """Check all limits, then record the request in every request limit, or in none."""
        return self.acquire_now(requests, tokens)

    async def charge(self, tokens: Sequence[TokenLimit], amount: int) -> None:
        """Charge ``amount`` tokens of a finished request to every token limit."""
        self.charge_now(tokens, amount)

    async def aclose(self) -> None:
        """Nothing to release; present for the :class:`~keyplane.ratelimit.Limiter` protocol."""

    def sweep(self) -> int:
        """Drop every counter whose entries have all left the window; return how many went."""
        return self._sweep(self._now(), None)

    def _sweep(self, now: float, budget: int | None) -> int:
        due = self._due
        removed = 0
        while due and due[0][0] <= now:
            if budget is not None:
                if budget == 0:
                    break
                budget -= 1
            _, counter, kind = heapq.heappop(due)
            store = self._requests if kind == _REQUESTS else self._tokens
            log = store[counter]
            idle_at = log.newest() + log.window if log.entries else now
            if idle_at <= now:
                del store[counter]
                removed += 1
            else:
                heapq.heappush(due, (idle_at, counter, kind))
        return removed
