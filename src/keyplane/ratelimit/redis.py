"""Rate limiter shared by a cluster's gateway replicas through one Redis (standalone or primary).

Same semantics and data layout as :mod:`keyplane.ratelimit.memory`, kept in Redis and driven by
Lua so that each call is one round trip and atomic:

* one ``acquire`` = one script: it reads ``TIME`` (Redis's clock, so replicas need not agree on
  theirs), checks every limit, and only if all pass records the request in every request limit;
* one ``charge`` = one script adding the tokens to every token limit.

Each counter is a list ``<prefix><r|t>:<counter>:log`` of entries ``"<µs>"`` or ``"<µs>:<units>"``
(oldest first) plus ``...:sum`` holding their total, so a check costs O(1) amortised: drop the
expired head entries, read the sum. Request limits up to ``exact_max`` log each admission at its
exact microsecond (a sliding log of at most ``limit`` entries); larger limits and all token limits
round times up to bucket ends (``window / buckets``) and merge entries per bucket, so their lists
hold at most ``buckets + 1`` entries whatever the traffic. Both keys get a TTL of the time until
their newest entry leaves the window, so idle counters vanish on their own.

``TIME`` is the Redis host's wall clock: if it is stepped, windows shift with it (forward: entries
leave early; backward: they stay longer, and new entries merge into the newest rather than break
the log's order). Keep that host on NTP slewing, as usual.

The scripts touch several keys that generally live in different hash slots, so Redis Cluster is
not supported; use one Redis (with Sentinel for failover if wanted).

When Redis cannot be reached the :class:`FailurePolicy` decides, and the decision says
``degraded=True``: ``allow`` admits without quotas, ``deny`` refuses with ``violated=None`` and
``retry_after=retry_interval``, ``local`` answers from an in-process :class:`MemoryLimiter` with
every limit divided by the replica count. Redis is tried again at most once per
``retry_interval`` (one probe at a time), and the first success puts it back in charge.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from enum import StrEnum
from typing import Any

import redis.exceptions
from prometheus_client import Counter
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from keyplane.ratelimit.base import (
    ALLOWED,
    Clock,
    Decision,
    RequestLimit,
    SystemClock,
    Tally,
    TokenLimit,
    active,
    active_tokens,
)
from keyplane.ratelimit.memory import MemoryLimiter

__all__ = ["FAILURES", "FailurePolicy", "RedisLimiter"]

log = logging.getLogger(__name__)

FAILURES = Counter(
    "keyplane_ratelimit_failures",
    "Rate-limit decisions taken by the failure policy because Redis could not be used.",
    ["policy"],
)
"""``keyplane_ratelimit_failures_total{policy}``; module-level so that limiters can share it."""


class FailurePolicy(StrEnum):
    """What a :class:`RedisLimiter` does while Redis is unreachable."""

    ALLOW = "allow"
    """Admit every request: availability over limits."""
    DENY = "deny"
    """Refuse every request: limits over availability."""
    LOCAL = "local"
    """Enforce each limit in this process, divided by the number of gateway replicas."""


# Errors that mean "Redis cannot serve us right now", as opposed to a bug in a script or a call.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError, MaxConnectionsError
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica answered during failover
    redis.exceptions.OutOfMemoryError,  # maxmemory reached: nothing can be recorded
    redis.exceptions.MasterDownError,
    OSError,
    TimeoutError,
)

_LUA_COMMON = """
local function parse(e)
  local i = string.find(e, ':', 1, true)
  if i then
    return tonumber(string.sub(e, 1, i - 1)), tonumber(string.sub(e, i + 1))
  end
  return tonumber(e), 1
end

local function fmt(q, n)
  if n == 1 then return string.format('%.0f', q) end
  return string.format('%.0f:%.0f', q, n)
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Drop the entries at or before cutoff; return the units still counted and whether the sum key
-- must be rewritten. A sum key lost apart from its log is rebuilt from the log.
local function load(log, sum, cutoff)
  local total = tonumber(redis.call('GET', sum))
  local dirty = false
  while true do
    local e = redis.call('LINDEX', log, 0)
    if not e then
      return 0, total ~= nil
    end
    local q, n = parse(e)
    if q > cutoff then break end
    redis.call('LPOP', log)
    dirty = true
    if total then total = total - n end
  end
  if not total then
    total = 0
    for _, e in ipairs(redis.call('LRANGE', log, 0, -1)) do
      local _, n = parse(e)
      total = total + n
    end
    dirty = true
  end
  return total, dirty
end

-- Append n units at time q and return the newest entry's time; a q not after the newest entry
-- merges into it (keeps the log sorted and only ever makes units count longer).
local function add(log, q, n)
  local tail = redis.call('LINDEX', log, -1)
  if tail then
    local tq, tn = parse(tail)
    if q <= tq then
      redis.call('LSET', log, -1, fmt(tq, tn + n))
      return tq
    end
  end
  redis.call('RPUSH', log, fmt(q, n))
  return q
end

local function newest(log)
  local tail = redis.call('LINDEX', log, -1)
  if tail then
    local q = parse(tail)
    return q
  end
  return nil
end

-- Write the total back and expire both keys when the newest entry (at time last) leaves the
-- window.
local function store(log, sum, total, last, window, now)
  if total <= 0 then
    redis.call('DEL', log, sum)
    return
  end
  local ttl = math.ceil((last + window - now) / 1000) + 1
  redis.call('SET', sum, total, 'PX', ttl)
  redis.call('PEXPIRE', log, ttl)
end

-- The time of the entry whose departure takes `excess` units out of the window. Each entry holds
-- at least one unit, so the first `excess` entries are enough.
local function release(log, excess)
  local seen = 0
  for _, e in ipairs(redis.call('LRANGE', log, 0, excess - 1)) do
    local q, n = parse(e)
    seen = seen + n
    if seen >= excess then return q end
  end
  error('rate-limit log ' .. log .. ' holds less than its sum')
end
"""

# KEYS: log and sum of each request limit, then of each token limit.
# ARGV: number of request limits, then per limit: limit, window (µs), bucket width (µs, 0 = exact).
# Returns {admitted 0|1, then per limit: count after the decision, retry (µs, 0 unless this limit
# refuses), reset (µs)}.
_ACQUIRE = (
    _LUA_COMMON
    + """
local now = now_us()
local nreq = tonumber(ARGV[1])
local n = #KEYS / 2
local totals, dirty = {}, {}
local out = {1}
for i = 1, n do
  local log, sum, a = KEYS[2 * i - 1], KEYS[2 * i], 3 * i - 1
  local limit, window = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local total, d = load(log, sum, now - window)
  totals[i], dirty[i] = total, d
  local excess = total - limit
  if i <= nreq then excess = excess + 1 end
  local retry = 0
  if excess > 0 then
    out[1] = 0
    retry = release(log, excess) + window - now
  end
  out[3 * i] = retry
end
for i = 1, n do
  local log, sum, a = KEYS[2 * i - 1], KEYS[2 * i], 3 * i - 1
  local window, width = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local total, last = totals[i], nil
  if out[1] == 1 and i <= nreq then
    local q = now
    if width > 0 then q = (math.floor(now / width) + 1) * width end
    last = add(log, q, 1)
    total = total + 1
    store(log, sum, total, last, window, now)
  elseif total > 0 then
    last = newest(log)
    if dirty[i] then store(log, sum, total, last, window, now) end
  elseif dirty[i] then
    redis.call('DEL', log, sum)
  end
  out[3 * i - 1] = total
  local reset = 0
  if last then reset = last + window - now end
  out[3 * i + 1] = reset
end
return out
"""
)

# KEYS: log and sum of each token limit. ARGV: tokens, then per limit: window (µs), bucket (µs).
_CHARGE = (
    _LUA_COMMON
    + """
local now = now_us()
local amount = tonumber(ARGV[1])
for i = 1, #KEYS / 2 do
  local log, sum = KEYS[2 * i - 1], KEYS[2 * i]
  local window, width = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local total = load(log, sum, now - window)
  local last = add(log, (math.floor(now / width) + 1) * width, amount)
  store(log, sum, total + amount, last, window, now)
end
return 1
"""
)


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


class RedisLimiter:
    """Rate limits kept in Redis, shared by every gateway replica of a cluster.

    Build it with :meth:`from_url` (fail-fast timeouts, owns and closes its client) or pass a
    ``redis.asyncio.Redis`` you own — then give it small timeouts and no retries yourself, since
    every retry is latency added to a request while Redis is down.

    ``policy`` applies while Redis is unreachable; with ``LOCAL`` every limit is divided by
    ``replicas`` (rounded down, at least 1) and enforced in this process. ``failures`` counts the
    decisions the policy took (also exported as ``keyplane_ratelimit_failures_total``). While down,
    Redis is probed again at most once per ``retry_interval`` seconds, measured on ``clock``.
    ``exact_max``, ``buckets`` and ``token_buckets`` mean what they mean for
    :class:`~keyplane.ratelimit.MemoryLimiter`.
    """

    def __init__(
        self,
        client: Redis,
        *,
        policy: FailurePolicy = FailurePolicy.LOCAL,
        replicas: int = 1,
        prefix: str = "keyplane:rl:",
        retry_interval: float = 1.0,
        clock: Clock | None = None,
        exact_max: int = 1000,
        buckets: int = 60,
        token_buckets: int = 60,
        owns_client: bool = False,
    ) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        if buckets < 1 or token_buckets < 1:
            raise ValueError("buckets and token_buckets must be >= 1")
        self.policy = FailurePolicy(policy)
        self.replicas = replicas
        self.failures = 0
        """Decisions taken by the failure policy since this limiter was made."""
        self.prefix = prefix
        """Prepended to every Redis key this limiter writes."""
        self._client = client
        self._owns_client = owns_client
        self._retry_interval = retry_interval
        self._now = (clock or SystemClock()).monotonic
        self._exact_max = exact_max
        self._buckets = buckets
        self._token_buckets = token_buckets
        self._acquire_script = client.register_script(_ACQUIRE)
        self._charge_script = client.register_script(_CHARGE)
        self._metric = FAILURES.labels(policy=self.policy.value)
        self._local = MemoryLimiter(
            clock=clock, exact_max=exact_max, buckets=buckets, token_buckets=token_buckets
        )
        self._down = False
        self._next_probe = 0.0
        self._probing = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float = 0.25,
        max_connections: int = 64,
        policy: FailurePolicy = FailurePolicy.LOCAL,
        replicas: int = 1,
        prefix: str = "keyplane:rl:",
        retry_interval: float = 1.0,
        clock: Clock | None = None,
        exact_max: int = 1000,
        buckets: int = 60,
        token_buckets: int = 60,
    ) -> RedisLimiter:
        """A limiter with its own client for ``url`` (``redis://host:port/db``).

        ``timeout`` bounds connecting, each reply and the wait for one of the ``max_connections``
        pooled connections. The client retries once, and only a broken connection: after Redis
        restarts every pooled connection is dead, and each would otherwise flip the limiter back
        to its failure policy in turn. Timeouts are not retried: the failure policy is the answer
        to an unreachable Redis, not waiting for it.
        """
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
        )
        client = Redis.from_pool(pool)  # the client owns the pool and closes it
        return cls(
            client,
            policy=policy,
            replicas=replicas,
            prefix=prefix,
            retry_interval=retry_interval,
            clock=clock,
            exact_max=exact_max,
            buckets=buckets,
            token_buckets=token_buckets,
            owns_client=True,
        )

    @property
    def available(self) -> bool:
        """Whether the last attempt to use Redis succeeded."""
        return not self._down

    async def acquire(
        self, requests: Sequence[RequestLimit], tokens: Sequence[TokenLimit] = ()
    ) -> Decision:
        """Check all limits, then record the request in every request limit, or in none."""
        reqs = active(requests)
        toks = active_tokens(tokens)
        if not reqs and not toks:
            return ALLOWED
        probe = self._may_use_redis()
        if probe is not None:
            try:
                raw = await self._acquire_script(
                    keys=self._keys(reqs, toks), args=self._args(reqs, toks)
                )
            except _UNAVAILABLE as exc:
                self._mark_down(exc)
            else:
                self._mark_up()
                return _decision(raw, reqs, toks)
            finally:
                if probe:
                    self._probing = False
        return self._fallback(reqs, toks)

    async def charge(self, tokens: Sequence[TokenLimit], amount: int) -> None:
        """Charge ``amount`` tokens of a finished request to every token limit.

        While Redis is down the charge goes to the local limiter under ``LOCAL`` and is dropped
        otherwise (there is nothing to enforce it against).
        """
        if amount < 0:
            raise ValueError(f"cannot charge a negative number of tokens ({amount})")
        toks = active_tokens(tokens)
        if not toks or amount == 0:
            return
        probe = self._may_use_redis()
        if probe is not None:
            try:
                await self._charge_script(
                    keys=self._keys((), toks), args=self._charge_args(toks, amount)
                )
            except _UNAVAILABLE as exc:
                self._mark_down(exc)
            else:
                self._mark_up()
                return
            finally:
                if probe:
                    self._probing = False
        if self.policy is FailurePolicy.LOCAL:
            self._local.charge_now([self._scaled_token(lim) for lim in toks], amount)

    async def aclose(self) -> None:
        """Close the Redis client if this limiter made it (:meth:`from_url`)."""
        if self._owns_client:
            await self._client.aclose()

    # -- Redis availability ---------------------------------------------------------------------

    def _may_use_redis(self) -> bool | None:
        """``False``: use Redis; ``True``: use it as the one probe while down; ``None``: don't."""
        if not self._down:
            return False
        if self._probing or self._now() < self._next_probe:
            return None
        self._probing = True
        return True

    def _mark_down(self, exc: BaseException) -> None:
        if not self._down:
            log.warning(
                "redis unreachable (%s: %s); rate limits now follow the %r failure policy",
                type(exc).__name__,
                exc,
                self.policy.value,
            )
        self._down = True
        self._next_probe = self._now() + self._retry_interval

    def _mark_up(self) -> None:
        if self._down:
            log.warning("redis reachable again; rate limits are shared again")
            self._down = False

    def _fallback(self, reqs: list[RequestLimit], toks: list[TokenLimit]) -> Decision:
        self.failures += 1
        self._metric.inc()
        if self.policy is FailurePolicy.ALLOW:
            return replace(ALLOWED, degraded=True)
        if self.policy is FailurePolicy.DENY:
            return Decision(
                allowed=False,
                retry_after=self._retry_interval,
                violated=None,
                requests=None,
                tokens=None,
                degraded=True,
            )
        decision = self._local.acquire_now(
            [self._scaled(lim) for lim in reqs], [self._scaled_token(lim) for lim in toks]
        )
        return replace(decision, degraded=True)

    def _scaled(self, lim: RequestLimit) -> RequestLimit:
        return replace(lim, limit=max(1, lim.limit // self.replicas))

    def _scaled_token(self, lim: TokenLimit) -> TokenLimit:
        return replace(lim, limit=max(1, lim.limit // self.replicas))

    # -- script arguments -----------------------------------------------------------------------

    def _keys(self, reqs: Sequence[RequestLimit], toks: Sequence[TokenLimit]) -> list[str]:
        keys: list[str] = []
        for kind, counters in (("r:", reqs), ("t:", toks)):
            for lim in counters:
                base = self.prefix + kind + lim.counter
                keys.append(base + ":log")
                keys.append(base + ":sum")
        return keys

    def _args(self, reqs: Sequence[RequestLimit], toks: Sequence[TokenLimit]) -> list[int]:
        args = [len(reqs)]
        for lim in reqs:
            window = _us(lim.window)
            width = 0 if lim.limit <= self._exact_max else max(1, window // self._buckets)
            args += (lim.limit, window, width)
        for tlim in toks:
            args += (tlim.limit, _us(tlim.window), 0)
        return args

    def _charge_args(self, toks: Sequence[TokenLimit], amount: int) -> list[int]:
        args = [amount]
        for lim in toks:
            window = _us(lim.window)
            args += (window, max(1, window // self._token_buckets))
        return args


def _decision(raw: Any, reqs: Sequence[RequestLimit], toks: Sequence[TokenLimit]) -> Decision:
    """Turn the acquire script's reply into a :class:`Decision`."""
    values = [int(v) for v in raw]
    tally = Tally()
    admitted = values[0] == 1
    i = 1
    for lim in reqs:
        count, retry, reset = values[i], values[i + 1], values[i + 2]
        i += 3
        if not admitted and retry > 0:
            tally.violate("requests", lim, count, retry / 1e6)
        tally.request(lim.limit, count, reset / 1e6)
    for tlim in toks:
        used, retry, reset = values[i], values[i + 1], values[i + 2]
        i += 3
        if retry > 0:
            tally.violate("tokens", tlim, used, retry / 1e6)
        tally.token(tlim.limit, used, reset / 1e6)
    decision = tally.decision()
    if decision.allowed != admitted:
        raise AssertionError(f"rate-limit script disagrees with its own counts: {values}")
    return decision
