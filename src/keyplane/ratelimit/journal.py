"""A replica's own admissions and charges over the last window, to tell Redis after an outage.

Every admission a :class:`~keyplane.ratelimit.RedisLimiter` makes (through Redis or, while Redis is
away, by its failure policy) and every charge is written here with the replica's next sequence
number. When the replica gets Redis back it replays into Redis what Redis does not know — all of
it if Redis lost its data, else only what was decided locally — before taking any decision through
Redis again (``replay.lua``). Redis keeps the highest sequence number it has counted per replica,
so a replay that is retried after a lost reply counts nothing twice.

Times are the limiter's clock; a replay sends ages (``now - at``) rather than times, and Redis
places each entry at its own ``TIME`` minus the age: the replica's and Redis's clocks need not
agree, and the time spent on the wire only makes an entry count a little longer (the safe side).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from keyplane.ratelimit.base import RequestLimit, TokenLimit

__all__ = ["Journal", "Replay"]


@dataclass(slots=True)
class _Series:
    """The entries of one counter to replay: ``window`` and bucket ``width`` in µs."""

    window: int
    width: int
    limit: int
    tokens: bool
    entries: list[tuple[int, int, int]] = field(default_factory=list)  # (age µs, seq, units)

    def needed(self) -> list[tuple[int, int, int]]:
        """The newest entries that already hold the counter at its limit; the older ones cannot
        change a decision (while they are in the window, so are these, newer, ones) and would
        only cost time — an ``allow`` outage admits without bound."""
        entries = self.entries
        if not self.tokens:
            return entries[-self.limit :]
        held = 0
        for i in range(len(entries) - 1, -1, -1):
            held += entries[i][2]
            if held > self.limit:  # a token limit refuses once its charges exceed it
                return entries[i:]
        return entries


@dataclass(frozen=True, slots=True)
class Replay:
    """What one replay call carries: Redis keys (log, sum per counter) and script arguments."""

    keys: list[str]
    args: list[int]
    entries: int


class Journal:
    """Admissions and charges of this replica, oldest first, kept for the longest window seen.

    ``exact_max``, ``buckets`` and ``token_buckets`` are the limiter's: a replayed entry goes into
    Redis the way a live decision would (bucketed limits round its time up to a bucket end).
    """

    def __init__(self, *, exact_max: int, buckets: int, token_buckets: int) -> None:
        self._exact_max = exact_max
        self._buckets = buckets
        self._token_buckets = token_buckets
        # (time, seq, request limits or (), token limits or (), units)
        self._events: deque[
            tuple[float, int, Sequence[RequestLimit], Sequence[TokenLimit], int]
        ] = deque()
        self.horizon = 0.0
        """The longest window of any limit recorded so far, in seconds."""

    def __len__(self) -> int:
        return len(self._events)

    def admit(self, at: float, seq: int, limits: Sequence[RequestLimit]) -> None:
        """One request admitted at ``at`` under every limit of ``limits``."""
        self._append(at, seq, limits, (), 1, max(lim.window for lim in limits))

    def charge(self, at: float, seq: int, limits: Sequence[TokenLimit], amount: int) -> None:
        """``amount`` tokens charged at ``at`` to every limit of ``limits``."""
        self._append(at, seq, (), limits, amount, max(lim.window for lim in limits))

    def _append(
        self,
        at: float,
        seq: int,
        reqs: Sequence[RequestLimit],
        toks: Sequence[TokenLimit],
        units: int,
        window: float,
    ) -> None:
        if window > self.horizon:
            self.horizon = window
        events = self._events
        events.append((at, seq, reqs, toks, units))
        cutoff = at - self.horizon
        while events[0][0] <= cutoff:
            events.popleft()

    def replay(self, now: float, after: int, prefix: str) -> Replay:
        """The keys and arguments of ``replay.lua`` for the entries with a seq above ``after``."""
        series: dict[str, _Series] = {}
        for at, seq, reqs, toks, units in self._events:
            if seq <= after:
                continue
            age = now - at
            for lim in reqs:
                if lim.window <= age:
                    continue
                window = _us(lim.window)
                width = 0 if lim.limit <= self._exact_max else max(1, window // self._buckets)
                _series(series, prefix + "r:" + lim.counter, window, width, lim.limit, False)
                series[prefix + "r:" + lim.counter].entries.append((_us(age), seq, units))
            for tlim in toks:
                if tlim.window <= age:
                    continue
                window = _us(tlim.window)
                width = max(1, window // self._token_buckets)
                _series(series, prefix + "t:" + tlim.counter, window, width, tlim.limit, True)
                series[prefix + "t:" + tlim.counter].entries.append((_us(age), seq, units))
        keys: list[str] = []
        args: list[int] = []
        count = 0
        for base, s in series.items():
            needed = s.needed()
            keys += (base + ":log", base + ":sum")
            args += (s.window, s.width, len(needed))
            for entry in needed:
                args += entry
            count += len(needed)
        return Replay(keys, args, count)


def _series(
    series: dict[str, _Series], base: str, window: int, width: int, limit: int, tokens: bool
) -> None:
    found = series.get(base)
    if found is None:
        series[base] = _Series(window, width, limit, tokens)
    else:  # the newest event's limit wins, as it would for a live decision
        found.window, found.width, found.limit = window, width, limit


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)
