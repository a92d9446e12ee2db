"""Value types shared by every rate-limit backend, and the ``Limiter`` protocol they implement.

Vocabulary:

* a *request limit* (:class:`RequestLimit`) caps how many requests a counter admits in any window
  of ``window`` seconds — qps/qpm per key, rps/rpm per team×model;
* a *token limit* (:class:`TokenLimit`) caps tokens: a request is admitted while the tokens
  *charged* to the counter in the last ``window`` seconds do not exceed the limit, and tokens are
  charged when a request finishes, with the real count;
* a :class:`Decision` says whether one request was admitted, which limit refused it and what the
  gateway puts in its ``Retry-After`` and ``x-ratelimit-*`` headers.

Times are seconds, from a :class:`Clock`. Backends live in ``memory`` and ``redis``.

The outcome types (:class:`Decision`, :class:`Quota`, :class:`Violation`) are frozen msgspec
structs, not dataclasses: one or three of them are built per request, and a struct costs about a
sixth of a frozen dataclass to build (``msgspec.structs.replace`` copies one with changes).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import msgspec

__all__ = [
    "ALLOWED",
    "Clock",
    "Decision",
    "Limiter",
    "ManualClock",
    "Quota",
    "RequestLimit",
    "SystemClock",
    "TokenLimit",
    "Violation",
]


class Clock(Protocol):
    """Where a limiter reads the time: seconds on a clock that never goes backwards."""

    def monotonic(self) -> float: ...


class SystemClock:
    """The process's monotonic clock (``time.monotonic``)."""

    __slots__ = ()

    # A staticmethod so that ``clock.monotonic`` is the builtin itself: the hot path pays for
    # one C call, not a Python frame.
    monotonic = staticmethod(time.monotonic)


class ManualClock:
    """A clock that moves only when told to, so tests control time without sleeping."""

    __slots__ = ("now",)

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards: limiters rely on that)."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back {seconds} s")
        self.now += seconds


def _check(kind: str, name: str, limit: int, window: float) -> None:
    if limit < 0:
        raise ValueError(f"{kind} {name!r}: limit must be >= 0 (0 means unlimited), got {limit}")
    if not window > 0:  # written this way so NaN is refused too
        raise ValueError(f"{kind} {name!r}: window must be > 0 seconds, got {window}")


@dataclass(frozen=True, slots=True)
class RequestLimit:
    """At most ``limit`` admitted requests in any ``window`` seconds on ``counter``.

    ``name`` is what the gateway reports ("qps", "qpm", "rps", "rpm"); ``counter`` identifies the
    state, e.g. ``"key:<id>:qps"`` or ``"team:<id>:model:<m>:rpm"``. A limit of 0 means unlimited
    and is ignored. The same counter may be given a different limit on the next call: the new
    limit applies at once, against the admissions already recorded.
    """

    name: str
    counter: str
    limit: int
    window: float

    def __post_init__(self) -> None:
        _check("request limit", self.name, self.limit, self.window)


@dataclass(frozen=True, slots=True)
class TokenLimit:
    """Admit while the tokens charged to ``counter`` in the last ``window`` s are <= ``limit``.

    ``name`` is what the gateway reports ("tpm"). A limit of 0 means unlimited and is ignored.
    """

    name: str
    counter: str
    limit: int
    window: float = 60.0

    def __post_init__(self) -> None:
        _check("token limit", self.name, self.limit, self.window)


class Quota(msgspec.Struct, frozen=True, gc=False):
    """One limit's standing after a decision, for the ``x-ratelimit-*-requests|tokens`` headers.

    ``remaining`` counts what is left after this decision (an admitted request has already used
    its slot). ``reset_after`` is the number of seconds until everything now counted has left the
    window, i.e. until ``remaining`` is back to ``limit`` if nothing else arrives.
    """

    limit: int
    remaining: int
    reset_after: float


class Violation(msgspec.Struct, frozen=True, gc=False):
    """The limit that refused a request: ``actual`` already counted against ``limit``.

    For a request limit ``actual`` is the number of admissions in the window (>= ``limit``); for
    a token limit it is the tokens charged in the window (> ``limit``). ``retry_after`` is the
    number of seconds until this limit alone would admit again if nothing else happens.
    """

    kind: Literal["requests", "tokens"]
    name: str
    counter: str
    actual: int
    limit: int
    retry_after: float

    @property
    def message(self) -> str:
        """What a 429 body says, e.g. ``"qps limit exceeded: 20/20"``."""
        return f"{self.name} limit exceeded: {self.actual}/{self.limit}"


class Decision(msgspec.Struct, frozen=True, gc=False):
    """The outcome of one admission check.

    * ``retry_after``: 0 when admitted; otherwise seconds until the request could be admitted if
      nothing else happens (the longest wait among the violated limits). Exact for the sliding log.
    * ``violated``: the violated limit with the longest wait (ties: the first given), ``None`` when
      admitted — or when a failure policy refused the request without checking any limit.
    * ``requests`` / ``tokens``: the tightest request limit and the tightest token limit — fewest
      remaining after this decision, ties broken by the smaller limit — or ``None`` if no such
      limit was checked.
    * ``degraded``: the decision came from a failure policy because the shared store was down.
    """

    allowed: bool
    retry_after: float
    violated: Violation | None
    requests: Quota | None
    tokens: Quota | None
    degraded: bool = False


ALLOWED = Decision(allowed=True, retry_after=0.0, violated=None, requests=None, tokens=None)
"""The decision for a request that carries no limits at all."""


class Limiter(Protocol):
    """What the gateway needs from a rate-limit backend.

    Counter identities within one call must be distinct: each is checked once and recorded once.
    """

    async def acquire(
        self, requests: Sequence[RequestLimit], tokens: Sequence[TokenLimit] = ()
    ) -> Decision:
        """Check every limit; if all pass, record the request in every request limit, atomically.

        A refused request records nothing anywhere. Token limits are only checked here.
        """
        ...

    async def charge(self, tokens: Sequence[TokenLimit], amount: int) -> None:
        """Record ``amount`` tokens used by a finished request against every token limit."""
        ...

    async def aclose(self) -> None:
        """Release connections; the limiter must not be used afterwards."""
        ...


class Tally:
    """Builds a :class:`Decision` from per-limit results, the same way for every backend.

    Backends feed it each limit's count after the decision, then ask for the decision. Internal:
    shared by the backends so that they pick the tightest quota and the reported violation alike.
    """

    __slots__ = ("requests", "retry_after", "tokens", "violated")

    def __init__(self) -> None:
        self.requests: Quota | None = None
        self.tokens: Quota | None = None
        self.violated: Violation | None = None
        self.retry_after = 0.0

    def request(self, limit: int, count: int, reset_after: float) -> None:
        """A request limit holding ``count`` admissions, this request's included if admitted."""
        remaining = limit - count if count < limit else 0
        best = self.requests
        if best is None or (remaining, limit) < (best.remaining, best.limit):
            self.requests = Quota(limit, remaining, reset_after)

    def token(self, limit: int, used: int, reset_after: float) -> None:
        """A token limit with ``used`` tokens charged in its window."""
        remaining = limit - used if used < limit else 0
        best = self.tokens
        if best is None or (remaining, limit) < (best.remaining, best.limit):
            self.tokens = Quota(limit, remaining, reset_after)

    def violate(
        self,
        kind: Literal["requests", "tokens"],
        limit: RequestLimit | TokenLimit,
        actual: int,
        retry_after: float,
    ) -> None:
        """Record that ``limit`` refuses the request for another ``retry_after`` seconds."""
        if self.violated is None or retry_after > self.retry_after:
            self.violated = Violation(
                kind, limit.name, limit.counter, actual, limit.limit, retry_after
            )
            self.retry_after = retry_after

    def decision(self) -> Decision:
        violated = self.violated
        return Decision(
            allowed=violated is None,
            retry_after=self.retry_after,
            violated=violated,
            requests=self.requests,
            tokens=self.tokens,
        )


def active(limits: Sequence[RequestLimit]) -> list[RequestLimit]:
    """The limits that actually limit (limit > 0); 0 means unlimited."""
    return [lim for lim in limits if lim.limit > 0]


def active_tokens(limits: Sequence[TokenLimit]) -> list[TokenLimit]:
    """The token limits that actually limit (limit > 0); 0 means unlimited."""
    return [lim for lim in limits if lim.limit > 0]
