"""Rate limiter shared by a cluster's gateway replicas through one Redis (standalone or primary).

Same semantics and data layout as :mod:`keyplane.ratelimit.memory`, kept in Redis and driven by
Lua (``lua/*.lua``, loaded once at import) so that each call is atomic:

* one ``acquire`` reads ``TIME`` (Redis's clock, so replicas need not agree on theirs), checks
  every limit, and only if all pass records the request in every request limit (``acquire.lua``);
* one ``charge`` adds the tokens to every token limit (``charge.lua``).

Auto-pipelining: the acquires and charges made in one turn of the event loop travel together, as
one ``EVALSHA`` of ``batch.lua`` that runs each in the order made — one round trip and one
script call for all the requests in flight, so the client's CPU per decision falls with the load
while every decision is exactly what it would be alone at the batch's time (one ``TIME`` per
batch: Redis runs the script alone, nothing comes between its calls). The batch also reads the
epoch once and moves the replica's seen mark once; each call's arguments travel as one
MessagePack array, which the script reads as numbers without parsing text. At most two batches
are on the wire; calls made meanwhile gather into the next.

Each counter is a list ``<prefix>v2:<r|t>:<counter>:log`` of entries (time in µs and units, two
MessagePack integers; oldest first) plus ``...:sum`` holding their total, the log's length and its
oldest and newest entries (six MessagePack integers), so a check is one ``GET`` (and an ``LPOP``
and ``LINDEX`` per expired head entry), a refusal's retry time is the oldest entry's in the
common case, and recording touches the log's tail without reading it. Request limits up to
``exact_max`` log each admission at its exact microsecond (a sliding log of at most ``limit``
entries); larger limits and all token limits round times up to bucket ends (``window /
buckets``) and merge entries per bucket, so their lists hold at most ``buckets + 1`` entries
whatever the traffic. Both keys get a TTL of the time until
their newest entry leaves the window, so idle counters vanish on their own (set again only when
a new newest entry is pushed: the expiry is absolute, ``SET ... KEEPTTL`` otherwise).

The layout is versioned by the ``v2:`` after the prefix (the first layout, whose sum held the
total alone, had none). A rolling upgrade from it runs the two layouts side by side: old and new
replicas share the epoch, their seen marks and the roster, but count in separate keys, so while
both serve, each layout sees only its own replicas' admissions (a limit can admit up to its limit
in each, for the windows the rollout spans). Where that matters, replace every replica at once
(or drain the old ones first); the old keys expire on their own within a window.

``TIME`` is the Redis host's wall clock: if it is stepped, windows shift with it. Keep that host
on NTP slewing, as usual. The scripts touch keys in several hash slots: use one Redis, not Redis
Cluster (with Sentinel for failover if wanted).

Faults. A call that fails or takes longer than ``timeout`` marks Redis *down*: from then on every
decision comes at once from the :class:`FailurePolicy` (``degraded=True``), and a background task
probes Redis with a bounded backoff, off the request path. While up, the same task pings an idle
Redis so that ``/healthz`` notices an outage without traffic. On the way back the replica first
*replays* into Redis, in one idempotent script call, every admission and charge of the last
window that Redis does not know (:mod:`keyplane.ratelimit.journal`) — the ones its policy decided,
or all of its own if Redis lost its data — and only then decides through Redis again. For one
window after that (at least 2 s) it also keeps to its local share (``limit // replicas``),
because another replica may not have replayed yet. docs/architecture.md proves the bound of each
policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib.resources import files
from typing import Any

import hiredis
import msgspec
import redis.exceptions
from prometheus_client import Counter, Gauge, Histogram
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, parse_url
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
from keyplane.ratelimit.journal import Journal
from keyplane.ratelimit.memory import MemoryLimiter
from keyplane.ratelimit.resp import PATIENCE as _PATIENCE
from keyplane.ratelimit.resp import RespClient, Script

__all__ = ["FAILURES", "FailurePolicy", "RedisLimiter", "RedisLimiterSettings"]

log = logging.getLogger(__name__)

FAILURES = Counter(
    "keyplane_ratelimit_failures",
    "Rate-limit decisions taken by the failure policy because Redis could not be used.",
    ["policy"],
)
"""``keyplane_ratelimit_failures_total{policy}``; module-level so that limiters can share it."""
REDIS_UP = Gauge(
    "keyplane_ratelimit_redis_up",
    "1 while rate-limit decisions go through Redis, 0 while the failure policy takes them.",
    ["prefix"],
)
"""Per key prefix (one per cluster), so that a gateway with in-memory limits exports none."""
TRANSITIONS = Counter(
    "keyplane_ratelimit_transitions",
    "Times the rate limiter lost Redis (to=down) or handed decisions back to it (to=up).",
    ["to"],
)
WAITED = Histogram(
    "keyplane_ratelimit_redis_wait_seconds",
    "How long decisions waited on Redis (answered, or given up at the timeout).",
    buckets=(0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0),
)
REPLAYED = Counter(
    "keyplane_ratelimit_replayed_entries",
    "Admissions and charges a replica replayed into Redis on its way back (per counter).",
)


class FailurePolicy(StrEnum):
    """What a :class:`RedisLimiter` does while Redis is unreachable (docs/architecture.md)."""

    ALLOW = "allow"
    """Admit every request: availability over limits."""
    DENY = "deny"
    """Refuse every request: limits over availability."""
    LOCAL = "local"
    """At once, each replica enforces ``limit // replicas`` in its own memory, counting its own
    admissions of the window (at most ``limit + (replicas - 1) * (limit // replicas)`` in the
    window of the switch)."""
    LOCAL_STRICT = "local-strict"
    """Refuse a limit's requests until one full window has passed since Redis was lost, then
    ``limit // replicas`` per replica: never more than the limit when Redis itself fails."""


@dataclass(frozen=True, slots=True)
class RedisLimiterSettings:
    """How a :class:`RedisLimiter` uses Redis and what it does without it.

    * ``policy`` applies while Redis is down; ``replicas`` is the number of gateway replicas of
      the cluster (the ``local`` policies give each ``limit // replicas``, at least 1).
    * ``prefix`` is prepended to every key (one per cluster: clusters must not share counters).
    * ``timeout``: the longest a decision waits on Redis, connecting and queueing for one of the
      ``max_connections`` of redis-py's pool included; past it the policy decides.
    * ``probe_min`` … ``probe_max``: the backoff between probes while Redis is down (seconds,
      doubling). Keep ``probe_max`` under the shortest window (1 s) so that every replica is back
      within one window of the first (the hand-back relies on it).
    * ``heartbeat``: how often an idle limiter pings Redis while up.
    * ``exact_max``, ``buckets``, ``token_buckets`` mean what they mean for
      :class:`~keyplane.ratelimit.MemoryLimiter`.
    """

    policy: FailurePolicy = FailurePolicy.LOCAL
    replicas: int = 1
    prefix: str = "keyplane:rl:"
    timeout: float = 0.25
    max_connections: int = 64
    probe_min: float = 0.05
    probe_max: float = 0.5
    heartbeat: float = 1.0
    exact_max: int = 1000
    buckets: int = 60
    token_buckets: int = 60

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", FailurePolicy(self.policy))
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.buckets < 1 or self.token_buckets < 1:
            raise ValueError("buckets and token_buckets must be >= 1")
        for name in ("timeout", "probe_min", "probe_max", "heartbeat"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds")
        if self.probe_max < self.probe_min:
            raise ValueError("probe_max must be >= probe_min")


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

_LUA = files("keyplane.ratelimit") / "lua"
_COMMON = (_LUA / "common.lua").read_text()
_BATCH = _COMMON + "".join(
    (_LUA / name).read_text() for name in ("acquire.lua", "charge.lua", "batch.lua")
)
_REPLAY = _COMMON + (_LUA / "replay.lua").read_text()
_BATCH_MAX = 128
"""The most operations one batch carries: Redis runs a script alone, so this bounds how long one
batch holds it (a few ms at most); more calls wait for the next batch."""
_IN_FLIGHT = 2
"""Batches sent and not yet answered, at most: while they are, new calls gather into the next."""
_KEY_CACHE_SIZE = 100_000
"""Counters whose shapes (keys and fields) are kept, of each kind; past it the cache starts
afresh."""
_ROSTER_TTL_MS = 3_600_000
_LAYOUT = "v2:"
"""The counters' key layout, after the prefix (see the module's docstring)."""
_LEAN_URL = frozenset({"host", "port", "db", "username", "password"})
"""What a URL may give for from_url to use :class:`RespClient` (the rest: redis-py)."""
# The policies that never exceed a limit when Redis itself fails, and those that decide locally.
_EXACT = frozenset({FailurePolicy.DENY, FailurePolicy.LOCAL_STRICT})
_LOCAL = frozenset({FailurePolicy.LOCAL, FailurePolicy.LOCAL_STRICT})


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


class RedisLimiter:
    """Rate limits kept in Redis, shared by every gateway replica of a cluster.

    Build it with :meth:`from_url` (fail-fast timeouts, owns and closes its client) or pass a
    ``redis.asyncio.Redis`` you own — then give it small timeouts and no retries yourself.
    ``failures`` counts the decisions the policy took (also exported as
    ``keyplane_ratelimit_failures_total``). ``clock`` times the policy's windows, the blackout of
    ``local-strict`` and the hand-back; Redis decisions use Redis's clock.
    """

    def __init__(
        self,
        client: Redis | RespClient,
        settings: RedisLimiterSettings | None = None,
        *,
        clock: Clock | None = None,
        owns_client: bool = False,
    ) -> None:
        self.settings = settings = settings or RedisLimiterSettings()
        self.policy = settings.policy
        self.replicas = settings.replicas
        self.prefix = settings.prefix
        self.failures = 0
        """Decisions taken by the failure policy since this limiter was made."""
        self.replica_id = uuid.uuid4().hex
        """Names this limiter's admissions in Redis (the key of its replays)."""
        self._client = client
        self._owns_client = owns_client
        self._now = (clock or SystemClock()).monotonic
        self._batch_script = client.register_script(_BATCH)
        self._replay_script = client.register_script(_REPLAY)
        self._metric = FAILURES.labels(policy=self.policy.value)
        self._up_metric = REDIS_UP.labels(prefix=self.prefix)
        self._local = MemoryLimiter(
            clock=clock,
            exact_max=settings.exact_max,
            buckets=settings.buckets,
            token_buckets=settings.token_buckets,
        )
        self._journal = Journal(
            exact_max=settings.exact_max,
            buckets=settings.buckets,
            token_buckets=settings.token_buckets,
        )
        self._keys = (
            self.prefix + "epoch",
            self.prefix + "seen:" + self.replica_id,
            self.prefix + "roster",
        )
        self._counters = self.prefix + _LAYOUT  # every counter's keys start with it
        self._batch_keys = (self._keys[0].encode(), self._keys[1].encode())
        # Per counter: its limit and window, its keys and its script fields (see _shape).
        self._request_shapes: dict[str, _Shape] = {}
        self._token_shapes: dict[str, _Shape] = {}
        self._up = True
        self._epoch: str | None = None  # the Redis data this replica counts on; None: not yet met
        self._join_lock = asyncio.Lock()
        self._seq = 0  # the sequence number of this replica's last admission attempt or charge
        self._acked = 0  # every admission and charge up to this one is counted in Redis
        self._lost_at = 0.0  # when Redis was last found gone (or last answered after that)
        self._data_lost = False  # Redis came back without the state it had: wait for the others
        self._handback_until = float("-inf")
        self._back_at = float("-inf")
        self._replay_patience = max(1.0, 4 * settings.timeout)
        self._handback_floor = 2 * settings.probe_max + self._replay_patience
        self._last_ok = float("-inf")
        self._monitor: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._gate: asyncio.Future[None] | None = None  # set during the last replay before up
        # Auto-pipelining: calls not yet sent, as _Op tuples, and the
        # number of batches on the wire (see _submit).
        self._pending: list[_Op] = []
        self._flush_due = False
        self._in_flight = 0
        self._batches: set[asyncio.Future[Any]] = set()  # sent, not yet answered
        self._up_metric.set(1)

    @classmethod
    def from_url(
        cls, url: str, settings: RedisLimiterSettings | None = None, *, clock: Clock | None = None
    ) -> RedisLimiter:
        """A limiter with its own client for ``url`` (``redis://[[user]:password@]host:port/db``).

        A ``redis://`` URL with nothing in its query gets the limiter's own pipelined client
        (:class:`~keyplane.ratelimit.resp.RespClient`); any other (``rediss://``, ``unix://``,
        options in the query) gets redis-py's, a pool of up to ``max_connections``. Either
        retries once, and only a broken connection: after Redis restarts every open connection
        is dead, and each would otherwise count as an outage in turn. Timeouts are not retried:
        the failure policy is the answer to an unreachable Redis, not waiting for it. Their
        sockets time out at ``timeout``, but at a replay's patience during a replay's call.
        """
        settings = settings or RedisLimiterSettings()
        given = parse_url(url)
        if given.keys() <= _LEAN_URL:
            lean = RespClient(
                given.get("host", "localhost"),
                given.get("port", 6379),
                db=given.get("db", 0),
                username=given.get("username"),
                password=given.get("password"),
                timeout=settings.timeout,
            )
            return cls(lean, settings, clock=clock, owns_client=True)
        return cls(_redis_py(url, settings), settings, clock=clock, owns_client=True)

    @property
    def available(self) -> bool:
        """Whether decisions go through Redis (``False`` while the failure policy takes them)."""
        return self._up

    async def start(self) -> None:
        """Meet Redis and start the health probe now rather than at the first decision."""
        self._ensure_monitor()
        if self._up and self._epoch is None:
            await self._join()

    async def acquire(
        self, requests: Sequence[RequestLimit], tokens: Sequence[TokenLimit] = ()
    ) -> Decision:
        """Check all limits, then record the request in every request limit, or in none."""
        reqs = active(requests)
        toks = active_tokens(tokens)
        if not reqs and not toks:
            return ALLOWED
        if self._monitor is None:
            self._ensure_monitor()
        if self._gate is not None:
            await asyncio.shield(self._gate)  # the hand-over to Redis, within the timeout
        if self._up and self._epoch is None:
            await self._join()
        if not self._up:
            return self._fallback(reqs, toks)
        now = self._now()
        kept: list[RequestLimit] = []  # request limits the hand-back already recorded locally
        if now < self._handback_until:
            # Each limit for its window, and at least for the time the other replicas may take
            # to find Redis and replay (their probe interval and one replay).
            elapsed, floor = now - self._back_at, self._handback_floor
            kept = [lim for lim in reqs if elapsed < max(lim.window, floor)]
            held = [self._scaled_token(t) for t in toks if elapsed < max(t.window, floor)]
            if kept or held:
                share = self._local.acquire_now([self._scaled(lim) for lim in kept], held)
                if not share.allowed:
                    return share
        self._seq += 1
        seq = self._seq
        started = time.perf_counter()
        try:
            raw = await self._submit(*self._acquire_op(seq, reqs, toks))
        except _UNAVAILABLE as exc:
            WAITED.observe(time.perf_counter() - started)
            self._mark_down(f"{type(exc).__name__}: {exc}")
            return self._fallback(reqs, toks)
        WAITED.observe(time.perf_counter() - started)
        if int(raw[0]) == -1:
            self._mark_down("Redis lost the rate-limit state it held")
            return self._fallback(reqs, toks)
        decision = _decision(raw, reqs, toks)
        now = self._answered(seq)
        if decision.allowed and reqs:
            self._journal.admit(now, seq, reqs)
            self._local.record_now([self._scaled(lim) for lim in reqs if lim not in kept])
        return decision

    async def charge(self, tokens: Sequence[TokenLimit], amount: int) -> None:
        """Charge ``amount`` tokens of a finished request to every token limit.

        While Redis is down the charge is kept in the journal, replayed into Redis on its return,
        and counted by this replica's local limits meanwhile.
        """
        if amount < 0:
            raise ValueError(f"cannot charge a negative number of tokens ({amount})")
        toks = active_tokens(tokens)
        if not toks or amount == 0:
            return
        if self._gate is not None:
            await asyncio.shield(self._gate)
        if self._up and self._epoch is None:
            await self._join()
        self._seq += 1
        seq = self._seq
        if self._up:
            try:
                done = await self._submit(*self._charge_op(seq, toks, amount))
            except _UNAVAILABLE as exc:
                self._mark_down(f"{type(exc).__name__}: {exc}")
            else:
                if int(done) != -1:
                    self._answered(seq)
                    self._journal.charge(self._now(), seq, toks, amount)
                    self._local.charge_now([self._scaled_token(lim) for lim in toks], amount)
                    return
                self._mark_down("Redis lost the rate-limit state it held")
            # A new number: a replay since the call was sent may have covered the old one, and
            # if Redis did count it after all, counting it twice errs on the safe side.
            self._seq += 1
            seq = self._seq
        now = self._now()
        self._journal.charge(now, seq, toks, amount)
        self._local.charge_now([self._scaled_token(lim) for lim in toks], amount)

    async def aclose(self) -> None:
        """Stop the probe; close the Redis client if this limiter made it (:meth:`from_url`)."""
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
        if self._owns_client:
            await self._client.aclose()

    # -- Redis availability ---------------------------------------------------------------------

    async def _call(
        self,
        script: Any,
        keys: Sequence[str | bytes],
        args: Sequence[int | str | bytes],
        patience: float | None = None,
    ) -> Any:
        # A task, so that a call past the timeout is left to end on its own: cancelling it in
        # place would wait for the client's clean-up, itself bounded only by its own timeouts.
        timeout = patience or self.settings.timeout
        if type(script) is Script:  # the lean client's: it keeps the deadline itself
            return await script.client.evalsha(script, keys, args, timeout)
        task = asyncio.ensure_future(script(keys=keys, args=args))
        done, _ = await asyncio.wait((task,), timeout=timeout)
        if not done:
            task.cancel()
            task.add_done_callback(_consume)
            raise TimeoutError(f"no answer from Redis within {timeout} s")
        return task.result()

    def _submit(self, keys: list[bytes], op: bytes) -> asyncio.Future[Any]:
        """Queue one acquire or charge (``op``, its argument of ``batch.lua``, on ``keys``) for
        the next batch; its future gets the reply the operation's script gives, or the error that
        stopped its batch.

        Every call made in one turn of the event loop goes in one batch: one ``EVALSHA`` of
        ``batch.lua``, one round trip, however many requests are in flight. While ``_IN_FLIGHT``
        batches are on the wire, new calls wait for the next (they would queue at Redis anyway).
        Each call still waits at most ``timeout`` from now, queueing included.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((loop.time() + self.settings.timeout, keys, op, future))
        if not self._flush_due and self._in_flight < _IN_FLIGHT:
            self._flush_due = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        """Send the calls gathered so far as one batch (at most ``_BATCH_MAX`` of them)."""
        self._flush_due = False
        pending = self._pending
        if not pending or self._in_flight >= _IN_FLIGHT:
            return
        batch, self._pending = pending[:_BATCH_MAX], pending[_BATCH_MAX:]
        self._in_flight += 1
        script = self._batch_script
        if type(script) is Script:
            # The lean client keeps the deadline itself: the batch goes now, and its answer is
            # handed out from the reply's callback (no task, two loop turns fewer per batch).
            keys, args = self._batch_args(batch)
            patience = batch[0][0] - asyncio.get_running_loop().time()
            if patience > 0:
                reply = script.client.evalsha(script, keys, args, patience)
                self._batches.add(reply)
                reply.add_done_callback(functools.partial(self._landed, batch))
                return
            self._settle(batch, None, self._late())
            return
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._batches.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._batches.discard)

    def _batch_args(self, batch: list[_Op]) -> tuple[list[bytes], list[bytes]]:
        keys = [self._batch_keys[0], self._batch_keys[1]]
        args: list[bytes] = []
        for _, op_keys, op, _ in batch:
            keys += op_keys
            args.append(op)
        return keys, args

    def _late(self) -> TimeoutError:
        return TimeoutError(f"no answer from Redis within {self.settings.timeout} s")

    async def _send(self, batch: list[_Op]) -> None:
        """One batch through a client other than the lean one (redis-py's, or a test's)."""
        keys, args = self._batch_args(batch)
        # The first call queued waits the longest: the batch has what is left of its timeout.
        patience = batch[0][0] - asyncio.get_running_loop().time()
        try:
            if patience <= 0:
                raise self._late()
            replies = await self._call(self._batch_script, keys, args, patience)
        except asyncio.CancelledError:
            for *_, future in batch:
                future.cancel()
            self._settle([], None, None)
            raise
        except Exception as exc:
            self._settle(batch, None, exc)
        else:
            self._settle(batch, replies, None)

    def _landed(self, batch: list[_Op], reply: asyncio.Future[Any]) -> None:
        """The lean client's answer to ``batch`` (or its failure)."""
        self._batches.discard(reply)
        if reply.cancelled():
            for *_, future in batch:
                future.cancel()
            self._settle([], None, None)
            return
        exc = reply.exception()
        if exc is not None:
            self._settle(batch, None, exc)
        else:
            self._settle(batch, reply.result(), None)

    def _settle(self, batch: list[_Op], replies: Any, exc: BaseException | None) -> None:
        """Hand out a batch's replies (or ``exc``), then let the next batch go."""
        try:
            if exc is not None:
                failed = batch
                if isinstance(exc, _UNAVAILABLE):
                    # The calls queued behind this batch would meet the same Redis: they fail
                    # with it, and the failure policy answers them at once.
                    failed, self._pending = batch + self._pending, []
                for *_, future in failed:
                    if not future.done():
                        future.set_exception(exc)
            elif batch:
                for (*_, future), reply in zip(batch, replies, strict=True):
                    if not future.done():
                        future.set_result(reply)
        finally:
            self._in_flight -= 1
            if self._pending and not self._flush_due:
                self._flush_due = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _answered(self, seq: int) -> float:
        now = self._now()
        self._last_ok = now
        if seq > self._acked:
            self._acked = seq
        if not self._up:  # a call sent before the outage was found, answered after
            self._lost_at = max(self._lost_at, now)
        return now

    async def _join(self) -> None:
        """Learn Redis's epoch (creating it in an empty Redis) before the first decision."""
        async with self._join_lock:
            if self._epoch is not None or not self._up:
                return
            try:
                await self._replay(complete=False)
            except _UNAVAILABLE as exc:
                self._mark_down(f"{type(exc).__name__}: {exc}")

    async def _replay(self, *, complete: bool, patience: float | None = None) -> tuple[int, int]:
        """One replay call; returns (status, roster size) and adopts the epoch on success."""
        now = self._now()
        top = self._seq
        batch = self._journal.replay(now, 0 if complete else self._acked, self._counters)
        ttl = self._seen_ttl_ms()
        # Off the request path, and a replay may carry a window's worth of entries.
        patience = patience or self._replay_patience
        token = _PATIENCE.set(patience)  # the call's task runs in a copy of this context
        try:
            raw = await self._call(
                self._replay_script,
                [*self._keys, *batch.keys],
                [
                    self._epoch or "",
                    uuid.uuid4().hex,
                    self.replica_id,
                    int(complete),
                    top,
                    ttl,
                    max(_ROSTER_TTL_MS, 2 * ttl),
                    *batch.args,
                ],
                patience,
            )
        finally:
            _PATIENCE.reset(token)
        status, roster = int(raw[0]), int(raw[2])
        if status == 0:
            epoch = raw[1]
            self._epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
            self._acked = max(self._acked, top)
            self._last_ok = self._now()
            if batch.entries:
                REPLAYED.inc(batch.entries)
        return status, roster

    async def _recover(self) -> bool:
        """Replay what Redis lacks, then hand decisions back to it; ``False``: not yet."""
        status, roster = await self._replay(complete=False)
        if status == 1:
            self._data_lost = True
            status, roster = await self._replay(complete=True)
        if (
            self.policy in _EXACT
            and self._data_lost
            and roster < self.replicas
            and self._now() < self._lost_at + self._journal.horizon
        ):
            # Redis lost what the others admitted before the outage; until they have replayed
            # too (or that has left every window), deciding through Redis could exceed a limit.
            return False
        # What the policy decided while that replay was on the wire goes in one more, short,
        # replay; decisions wait for it (within the timeout) rather than add to it.
        gate = self._gate = asyncio.get_running_loop().create_future()
        try:
            if self._seq > self._acked:
                status, _ = await self._replay(complete=False, patience=self.settings.timeout)
                if status == 1:  # Redis lost its data again in the meantime
                    return False
            self._switch_up()
        finally:
            self._gate = None
            gate.set_result(None)
        return True

    def _switch_up(self) -> None:
        now = self._now()
        self._up = True
        self._data_lost = False
        if self.policy in _LOCAL:
            # Another replica may still decide locally until its own probe finds Redis: keep to
            # this replica's share for one window, so that the two together stay in the limit.
            self._back_at = now
            self._handback_until = now + max(self._journal.horizon, self._handback_floor)
        self._up_metric.set(1)
        TRANSITIONS.labels(to="up").inc()
        log.warning(
            "redis reachable again after %.2f s; replica %s replayed its decisions and hands "
            "rate limits back to Redis",
            now - self._lost_at,
            self.replica_id[:8],
        )

    def _mark_down(self, reason: str) -> None:
        if not self._up:
            return
        self._up = False
        self._lost_at = self._now()
        self._up_metric.set(0)
        TRANSITIONS.labels(to="down").inc()
        log.warning(
            "redis unusable (%s); rate limits now follow the %r failure policy",
            reason,
            self.policy.value,
        )
        self._wake.set()

    def _ensure_monitor(self) -> None:
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """The health probe: pings an idle Redis while up, probes with backoff while down."""
        delay = self.settings.probe_min
        while True:
            try:
                if self._up:
                    delay = self.settings.probe_min
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.settings.heartbeat):
                            await self._wake.wait()
                    if self._up and self._now() - self._last_ok >= self.settings.heartbeat:
                        # An empty replay: proves Redis answers, and that it still holds the
                        # state this replica counts on (an idle replica must learn of a restart
                        # too, or the others would wait for its replay).
                        try:
                            status, _ = await self._replay(complete=False)
                        except _UNAVAILABLE as exc:
                            self._mark_down(f"health probe: {type(exc).__name__}: {exc}")
                        else:
                            if status == 1:
                                self._mark_down("Redis lost the rate-limit state it held")
                    continue
                await asyncio.sleep(delay)
                try:
                    back = await self._recover()
                except _UNAVAILABLE:
                    delay = min(2 * delay, self.settings.probe_max)
                else:
                    delay = self.settings.probe_min if not back else delay
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the probe for good
                log.exception("rate-limit health probe failed")
                await asyncio.sleep(self.settings.probe_max)

    # -- the failure policy ---------------------------------------------------------------------

    def _fallback(self, reqs: list[RequestLimit], toks: list[TokenLimit]) -> Decision:
        self.failures += 1
        self._metric.inc()
        policy = self.policy
        if policy is FailurePolicy.DENY:
            return Decision(
                allowed=False,
                retry_after=max(1.0, self.settings.probe_max),
                violated=None,
                requests=None,
                tokens=None,
                degraded=True,
            )
        now = self._now()
        if policy is FailurePolicy.ALLOW:
            if reqs:
                self._seq += 1
                self._journal.admit(now, self._seq, reqs)
                self._local.record_now([self._scaled(lim) for lim in reqs])
            return msgspec.structs.replace(ALLOWED, degraded=True)
        if policy is FailurePolicy.LOCAL_STRICT:
            lost = self._lost_at
            wait = max(
                [lost + lim.window - now for lim in reqs]
                + [lost + lim.window - now for lim in toks]
            )
            if wait > 0:  # some limit's window may still hold admissions Redis decided
                return Decision(
                    allowed=False,
                    retry_after=wait,
                    violated=None,
                    requests=None,
                    tokens=None,
                    degraded=True,
                )
        decision = self._local.acquire_now(
            [self._scaled(lim) for lim in reqs], [self._scaled_token(lim) for lim in toks]
        )
        if decision.allowed and reqs:
            self._seq += 1
            self._journal.admit(now, self._seq, reqs)
        return msgspec.structs.replace(decision, degraded=True)

    def _scaled(self, lim: RequestLimit) -> RequestLimit:
        if self.replicas == 1:  # an active limit is >= 1: its share is itself
            return lim
        return RequestLimit(lim.name, lim.counter, max(1, lim.limit // self.replicas), lim.window)

    def _scaled_token(self, lim: TokenLimit) -> TokenLimit:
        if self.replicas == 1:
            return lim
        return TokenLimit(lim.name, lim.counter, max(1, lim.limit // self.replicas), lim.window)

    # -- script arguments -----------------------------------------------------------------------

    # An operation's arguments travel as one MessagePack array (see batch.lua): [kind, key count,
    # epoch, seq, seen ttl, ...] — the client encodes one argument per operation rather than one
    # per number, and the script reads numbers without parsing text. The epoch is a hex string;
    # "-" stands for none known, which matches no epoch Redis holds. Each counter's keys and
    # encoded fields are built once (its shape, until its limit or window changes): a call joins
    # them under the array's header.

    def _acquire_op(
        self, seq: int, reqs: Sequence[RequestLimit], toks: Sequence[TokenLimit]
    ) -> tuple[list[bytes], bytes]:
        """The keys and the argument of one acquire: per request limit its limit, window and
        bucket width (0: exact), per token limit its limit and window."""
        keys: list[bytes] = []
        fields: list[bytes] = []
        longest = self._lay(reqs, self._request_shapes, "r:", 0, keys, fields)
        self._lay(toks, self._token_shapes, "t:", 0, keys, fields)
        ttl = _ttl_ms(max(longest, self._journal.horizon))
        head = _pack(("a", len(keys), self._epoch or "-", seq, ttl, len(reqs)))
        return keys, _array(6 + 3 * len(fields)) + head + b"".join(fields)

    def _charge_op(
        self, seq: int, toks: Sequence[TokenLimit], amount: int
    ) -> tuple[list[bytes], bytes]:
        """The keys and the argument of one charge: per token limit its window and bucket width."""
        keys: list[bytes] = []
        fields: list[bytes] = []
        longest = self._lay(toks, self._token_shapes, "t:", 1, keys, fields)
        ttl = _ttl_ms(max(longest, self._journal.horizon))
        head = _pack(("c", len(keys), self._epoch or "-", seq, ttl, amount))
        return keys, _array(6 + 2 * len(fields)) + head + b"".join(fields)

    def _lay(
        self,
        limits: Sequence[RequestLimit] | Sequence[TokenLimit],
        shapes: dict[str, _Shape],
        kind: str,
        field: int,
        keys: list[bytes],
        fields: list[bytes],
    ) -> float:
        """Add each limit's keys to ``keys`` and its fields in an acquire (``field`` 0) or a
        charge (1) to ``fields``; return the longest window among them (0 if none)."""
        longest = 0.0
        for lim in limits:
            shape = shapes.get(lim.counter)
            if shape is None or shape[0] != lim.limit or shape[1] != lim.window:
                shape = self._shape(lim, shapes, kind)
            keys += shape[2]
            fields.append(shape[3][field])
            if lim.window > longest:
                longest = lim.window
        return longest

    def _shape(
        self, lim: RequestLimit | TokenLimit, shapes: dict[str, _Shape], kind: str
    ) -> _Shape:
        """``lim``'s shape, built and kept in ``shapes`` (emptied when full)."""
        if len(shapes) >= _KEY_CACHE_SIZE:
            shapes.clear()
        base = (self._counters + kind + lim.counter).encode()
        window = _us(lim.window)
        if kind == "r:":
            width = (
                0
                if lim.limit <= self.settings.exact_max
                else max(1, window // self.settings.buckets)
            )
            acquire = _pack((lim.limit, window, width))
            charge = b""
        else:
            acquire = _pack((lim.limit, window, 0))
            charge = _pack((window, max(1, window // self.settings.token_buckets)))
        shape = shapes[lim.counter] = (
            lim.limit,
            lim.window,
            (base + b":log", base + b":sum"),
            (acquire, charge),
        )
        return shape

    def _seen_ttl_ms(self) -> int:
        return _ttl_ms(self._journal.horizon)

    def _seen_ttl_for(self, limits: Sequence[RequestLimit | TokenLimit]) -> int:
        longest = self._journal.horizon
        for lim in limits:
            if lim.window > longest:
                longest = lim.window
        return _ttl_ms(longest)


_encode = msgspec.msgpack.Encoder().encode


def _pack(items: tuple[int | str, ...]) -> bytes:
    """``items`` as consecutive MessagePack values, without the array's header (at most 15 items:
    a fixarray's header is one byte)."""
    return _encode(items)[1:]


def _array(length: int) -> bytes:
    """The MessagePack header of an array of ``length`` items."""
    if length < 16:
        return bytes((0x90 | length,))
    return b"\xdc" + length.to_bytes(2, "big")


def _ttl_ms(longest: float) -> int:
    """How long the seen mark lives, in ms: the longest window (at least 1 s), plus a second."""
    return round(max(longest, 1.0) * 1000) + 1000


_Shape = tuple[int, float, tuple[bytes, bytes], tuple[bytes, bytes]]
"""One counter's shape: its limit and window, its log and sum keys, its fields in an acquire
and in a charge (see ``_acquire_op``, ``_charge_op``)."""
_Op = tuple[float, list[bytes], bytes, asyncio.Future[Any]]
"""A call waiting for its batch: (deadline on the loop's clock, its keys, its argument of
``batch.lua``, its future)."""


def _redis_py(url: str, settings: RedisLimiterSettings) -> Redis:
    """from_url's redis-py client for ``url`` (also what bench/bench_limiter.py compares with)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.max_connections,
        timeout=settings.timeout,
        socket_timeout=settings.timeout,
        socket_connect_timeout=settings.timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
    )
    pool.connection_class = _patient(_fast_packing(pool.connection_class))
    return Redis.from_pool(pool)  # the client owns the pool and closes it


def _fast_packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls``, packing a command whose arguments are all str, bytes or int (every command of the
    limiter's) in one call into hiredis: redis-py's packer first walks the arguments in Python,
    twice, which at 32 decisions in flight was ~28 % of the client's CPU per decision (18
    arguments per request). The bytes on the wire are the same; anything else is redis-py's."""
    slow = cls.pack_command

    def pack_command(self: AbstractConnection, *args: Any) -> list[bytes]:
        first = args[0]
        if type(first) is str and " " not in first:  # "SCRIPT LOAD" and the like: redis-py's
            try:
                return [hiredis.pack_command(args)]
            except TypeError:  # a bool, a memoryview...: redis-py's, and its errors
                pass
        return slow(self, *args)

    return type(cls.__name__, (cls,), {"pack_command": pack_command})


def _patient(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls``, whose socket timeout is the replay's patience while a replay's call runs
    (``_PATIENCE``): from_url's sockets have the decisions' timeout, and redis-py would end a
    replay there however long the limiter means to wait for it."""

    def get(self: AbstractConnection) -> float | None:
        patience = _PATIENCE.get()
        return self.__dict__["_socket_timeout"] if patience is None else patience

    def set_(self: AbstractConnection, value: float | None) -> None:
        self.__dict__["_socket_timeout"] = value

    return type(cls.__name__, (cls,), {"socket_timeout": property(get, set_)})


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned call's outcome, so that asyncio does not report it as lost."""
    if not task.cancelled():
        task.exception()


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
