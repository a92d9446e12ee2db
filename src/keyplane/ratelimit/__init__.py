"""Rate limits for the gateway: request limits over sliding windows and token limits.

Guarantees, for every backend:

* a :class:`RequestLimit` never admits more than ``limit`` requests in ANY window of ``window``
  seconds (not only epoch-aligned ones), and admits at least ~98 % of it under steady overload;
* a :class:`TokenLimit` admits while the tokens charged (by :meth:`Limiter.charge`, when requests
  finish) in the last ``window`` seconds are ``<= limit``;
* :meth:`Limiter.acquire` checks every limit of a request before recording it in any, atomically:
  a refused request records nothing.

Backends: :class:`MemoryLimiter` (one process; ``acquire_now`` is its synchronous fast path) and
:class:`RedisLimiter` (shared by a cluster's replicas, tuned by one :class:`RedisLimiterSettings`,
with a :class:`FailurePolicy` for when Redis is down and an exact replay when it returns).
:class:`ScaledWindows` shortens every window (tests and demos of per-minute limits).
"""

from typing import TYPE_CHECKING

from keyplane.ratelimit.base import (
    ALLOWED,
    Clock,
    Decision,
    Limiter,
    ManualClock,
    Quota,
    RequestLimit,
    SystemClock,
    TokenLimit,
    Violation,
)
from keyplane.ratelimit.memory import MemoryLimiter
from keyplane.ratelimit.redis import FAILURES, FailurePolicy, RedisLimiter, RedisLimiterSettings
from keyplane.ratelimit.scaled import ScaledWindows

__all__ = [
    "ALLOWED",
    "FAILURES",
    "Clock",
    "Decision",
    "FailurePolicy",
    "Limiter",
    "ManualClock",
    "MemoryLimiter",
    "Quota",
    "RedisLimiter",
    "RedisLimiterSettings",
    "RequestLimit",
    "ScaledWindows",
    "SystemClock",
    "TokenLimit",
    "Violation",
]

if TYPE_CHECKING:
    # mypy proves here that both backends implement the Limiter protocol.
    def _implements_limiter(
        memory: MemoryLimiter, redis: RedisLimiter, scaled: ScaledWindows
    ) -> list[Limiter]:
        return [memory, redis, scaled]
