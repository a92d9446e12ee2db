"""The rate-limit contract, run unchanged against every backend: in-process memory and Redis.

For Redis the module starts its own ``redis-server`` on a free loopback port. Redis keeps its own
time, so the shared tests either do not depend on timing (60 s windows, bursts) or use short real
windows with one-sided assertions. Tests that need exact control of time run on the memory backend
only, in the section marked MEMORY ONLY at the end.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest
from redis.asyncio import Redis

from keyplane.ratelimit import (
    Limiter,
    ManualClock,
    MemoryLimiter,
    Quota,
    RedisLimiter,
    RedisLimiterSettings,
    RequestLimit,
    TokenLimit,
)
from tests.support.limits import qpm, qps, tpm
from tests.support.redis import RedisServer, counted, shared_redis, unpacked


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    # Every test keeps to its own key prefix: one server serves them all (and, under
    # scripts/mutants, every mutant's run).
    with shared_redis() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    if request.param == "memory":
        yield MemoryLimiter()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    redis_limiter = shared_limiter(server)
    try:
        yield redis_limiter
    finally:
        await redis_limiter.aclose()
    # A decision taken by the failure policy would make a Redis test pass for the wrong reason.
    assert redis_limiter.failures == 0, "some decisions did not come from Redis"


def shared_limiter(server: RedisServer) -> RedisLimiter:
    # These tests are about semantics, not latency: a generous timeout keeps a loaded CI machine
    # from turning slow replies into failure-policy decisions.
    return RedisLimiter.from_url(
        server.url, RedisLimiterSettings(timeout=10.0, prefix=f"test:{uuid.uuid4().hex}:")
    )


class Stopwatch:
    """Bounds on Redis-clocked durations: the oldest entry cannot predate the stopwatch, so a
    wait of ``window`` from it ends at least ``window - elapsed`` from now (5 ms for clocks
    rounding differently across processes)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def at_least(self, window: float) -> float:
        return window - (time.monotonic() - self.started) - 0.005


async def admitted(limiter: Limiter, n: int, *limits: RequestLimit) -> int:
    return sum([(await limiter.acquire(limits)).allowed for _ in range(n)])


async def test_a_burst_admits_exactly_the_limit(limiter: Limiter) -> None:
    watch = Stopwatch()
    assert await admitted(limiter, 50, qpm(20)) == 20
    refused = await limiter.acquire([qpm(20)])
    assert not refused.allowed
    assert refused.violated is not None
    assert refused.violated.message == "qpm limit exceeded: 20/20"
    assert watch.at_least(60.0) <= refused.retry_after <= 60.0
    assert refused.violated.retry_after == refused.retry_after
    assert refused.requests is not None
    assert (refused.requests.limit, refused.requests.remaining) == (20, 0)
    assert not refused.degraded


async def test_a_concurrent_burst_admits_exactly_the_limit(limiter: Limiter) -> None:
    decisions = await asyncio.gather(*(limiter.acquire([qpm(20)]) for _ in range(100)))
    assert sum(d.allowed for d in decisions) == 20
    remaining = sorted(d.requests.remaining for d in decisions if d.allowed and d.requests)
    assert remaining == list(range(20))  # each admission saw the ones before it


async def test_a_refused_request_records_nothing_in_its_other_limits(limiter: Limiter) -> None:
    key = qpm(10)
    team_model = RequestLimit("rpm", "team:1:model:m:rpm", 3, 60.0)
    assert await admitted(limiter, 3, key, team_model) == 3
    for _ in range(10):
        refused = await limiter.acquire([key, team_model])
        assert refused.violated is not None
        assert refused.violated.name == "rpm"
    assert await admitted(limiter, 20, key) == 7


async def test_a_token_refusal_records_nothing_in_the_request_limits(limiter: Limiter) -> None:
    await limiter.charge([tpm(100)], 101)
    for _ in range(5):
        assert not (await limiter.acquire([qpm(5)], [tpm(100)])).allowed
    assert await admitted(limiter, 10, qpm(5)) == 5


async def test_tokens_admit_up_to_the_limit_and_refuse_once_over_it(limiter: Limiter) -> None:
    watch = Stopwatch()
    await limiter.charge([tpm(1000)], 600)
    assert (await limiter.acquire([], [tpm(1000)])).allowed
    await limiter.charge([tpm(1000)], 400)
    at_limit = await limiter.acquire([], [tpm(1000)])
    assert at_limit.allowed
    assert at_limit.tokens is not None
    assert (at_limit.tokens.limit, at_limit.tokens.remaining) == (1000, 0)
    await limiter.charge([tpm(1000)], 1)
    over = await limiter.acquire([], [tpm(1000)])
    assert not over.allowed
    assert over.violated is not None
    assert over.violated.kind == "tokens"
    assert over.violated.message == "tpm limit exceeded: 1001/1000"
    # The oldest charge must leave: 60 s, plus up to one 1 s bucket.
    assert watch.at_least(60.0) <= over.retry_after <= 61.0


async def test_two_charges_over_the_limit_refuse_the_next_request(limiter: Limiter) -> None:
    await limiter.charge([tpm(1000)], 600)
    await limiter.charge([tpm(1000)], 600)
    refused = await limiter.acquire([qps(10)], [tpm(1000)])
    assert refused.violated is not None
    assert (refused.violated.name, refused.violated.actual) == ("tpm", 1200)


async def test_admission_records_no_tokens(limiter: Limiter) -> None:
    for _ in range(50):
        assert (await limiter.acquire([qpm(100)], [tpm(10)])).allowed
    decision = await limiter.acquire([], [tpm(10)])
    assert decision.tokens == Quota(limit=10, remaining=10, reset_after=0.0)


async def test_a_charge_goes_to_every_token_limit(limiter: Limiter) -> None:
    key, team_model = tpm(1000), TokenLimit("tpm", "team:1:model:m:tpm", 500)
    await limiter.charge([key, team_model], 501)
    refused = await limiter.acquire([], [key, team_model])
    assert refused.violated is not None
    assert refused.violated.counter == "team:1:model:m:tpm"
    key_only = await limiter.acquire([], [key])
    assert key_only.tokens is not None
    assert key_only.tokens.remaining == 499


async def test_quotas_report_the_tightest_limits(limiter: Limiter) -> None:
    requests = [qps(10), qpm(100), RequestLimit("rpm", "team:1:model:m:rpm", 12, 60.0)]
    tokens = [tpm(1000), TokenLimit("tpm", "team:1:model:m:tpm", 5000)]
    assert await admitted(limiter, 3, *requests) == 3
    watch = Stopwatch()
    await limiter.charge(tokens, 300)
    decision = await limiter.acquire(requests, tokens)
    assert decision.allowed
    assert (decision.retry_after, decision.violated) == (0.0, None)
    assert decision.requests is not None
    assert (decision.requests.limit, decision.requests.remaining) == (10, 6)
    assert 0.0 < decision.requests.reset_after <= 1.0
    assert decision.tokens is not None
    assert (decision.tokens.limit, decision.tokens.remaining) == (1000, 700)
    assert watch.at_least(60.0) <= decision.tokens.reset_after <= 61.0


async def test_a_changed_limit_applies_on_the_next_request(limiter: Limiter) -> None:
    assert await admitted(limiter, 10, qpm(10)) == 10
    lowered = await limiter.acquire([qpm(5)])
    assert lowered.violated is not None
    assert (lowered.violated.actual, lowered.violated.limit) == (10, 5)
    assert await admitted(limiter, 10, qpm(15)) == 5


async def test_counters_are_independent(limiter: Limiter) -> None:
    assert await admitted(limiter, 5, qpm(3, "key:a:qpm")) == 3
    assert await admitted(limiter, 5, qpm(3, "key:b:qpm")) == 3
    # A request limit and a token limit may share a counter name without sharing state.
    await limiter.charge([tpm(3, "shared")], 2)
    assert await admitted(limiter, 5, qpm(3, "shared")) == 3  # the 2 tokens are no requests
    assert (await limiter.acquire([], [tpm(3, "shared")])).allowed  # the 3 requests no tokens


async def test_no_limits_and_zero_limits_are_unlimited(limiter: Limiter) -> None:
    empty = await limiter.acquire([], [])
    assert empty.allowed
    assert (empty.requests, empty.tokens) == (None, None)
    assert await admitted(limiter, 30, qps(0), qpm(0)) == 30
    await limiter.charge([tpm(0)], 10**6)
    assert (await limiter.acquire([], [tpm(0)])).allowed


async def test_a_large_limit_uses_buckets_and_still_admits_exactly_the_limit(
    limiter: Limiter,
) -> None:
    big = RequestLimit("rpm", "team:1:model:m:rpm", 1500, 60.0)  # above exact_max = 1000
    watch = Stopwatch()
    assert await admitted(limiter, 1600, big) == 1500
    refused = await limiter.acquire([big])
    assert refused.violated is not None
    assert watch.at_least(60.0) <= refused.retry_after <= 61.0


async def test_a_short_real_window_slides_and_retry_after_is_not_early(limiter: Limiter) -> None:
    window = 0.3
    lim = RequestLimit("qps", "key:1:short", 3, window)
    assert await admitted(limiter, 3, lim) == 3
    started = time.monotonic()
    refused = await limiter.acquire([lim])
    assert not refused.allowed
    assert 0.0 < refused.retry_after <= window
    deadline = started + 5.0
    while not (await limiter.acquire([lim])).allowed:
        assert time.monotonic() < deadline, "the window never slid"
        await asyncio.sleep(0.005)  # polling a condition with a deadline
    # Admission cannot come before Retry-After said (5 ms: clock rounding across processes).
    assert time.monotonic() - started >= refused.retry_after - 0.005


# -- Redis only ------------------------------------------------------------------------------------


async def test_redis_keys_expire_with_their_window(redis_server: RedisServer) -> None:
    limiter = shared_limiter(redis_server)
    prefix = limiter.prefix
    client = Redis.from_url(redis_server.url)
    try:
        assert (await limiter.acquire([RequestLimit("qps", "k", 5, 0.2)])).allowed
        await limiter.charge([TokenLimit("tpm", "k", 100, 0.3)], 7)
        keys = await client.keys(prefix + "v2:[rt]:*")
        assert len(keys) == 4  # a log and a sum per counter
        for key in keys:
            assert 0 < await client.pttl(key) <= 1000
        deadline = time.monotonic() + 5.0
        while await client.keys(prefix + "v2:[rt]:*"):
            assert time.monotonic() < deadline, "idle counters did not expire"
            await asyncio.sleep(0.02)
        assert limiter.failures == 0
    finally:
        await client.aclose()
        await limiter.aclose()


async def test_redis_logs_stay_bounded(redis_server: RedisServer) -> None:
    limiter = shared_limiter(redis_server)
    prefix = limiter.prefix
    client = Redis.from_url(redis_server.url)
    try:
        for _ in range(300):
            await limiter.acquire([qpm(25)])
            await limiter.charge([tpm(10**9)], 3)
        assert await client.llen(prefix + "v2:r:key:1:qpm:log") == 25
        assert counted(await client.get(prefix + "v2:r:key:1:qpm:sum")) == 25
        assert await client.llen(prefix + "v2:t:key:1:tpm:log") <= 61  # merged per 1 s bucket
        assert counted(await client.get(prefix + "v2:t:key:1:tpm:sum")) == 900
    finally:
        await client.aclose()
        await limiter.aclose()


async def test_redis_rebuilds_a_lost_sum_from_the_log(redis_server: RedisServer) -> None:
    limiter = shared_limiter(redis_server)
    client = Redis.from_url(redis_server.url)
    try:
        assert await admitted(limiter, 4, qpm(5)) == 4
        await client.delete(limiter.prefix + "v2:r:key:1:qpm:sum")  # e.g. evicted under maxmemory
        assert await admitted(limiter, 5, qpm(5)) == 1
        assert counted(await client.get(limiter.prefix + "v2:r:key:1:qpm:sum")) == 5
        # A sum without its log still counts what was admitted, until the log is next written:
        # the write finds the log out of step with its sum (its length) and rebuilds from it.
        await client.delete(limiter.prefix + "v2:r:key:1:qpm:log")
        assert await admitted(limiter, 1, qpm(5)) == 0
        assert await admitted(limiter, 8, qpm(7)) == 7  # the first rebuilt it: 1, then 6 more
        assert await client.llen(limiter.prefix + "v2:r:key:1:qpm:log") == 7
        assert counted(await client.get(limiter.prefix + "v2:r:key:1:qpm:sum")) == 7
        # The same when a charge merges into the newest entry of a log that is gone.
        for _ in range(3):
            await limiter.charge([tpm(10**9)], 4)
        await client.delete(limiter.prefix + "v2:t:key:1:tpm:log")
        await limiter.charge([tpm(10**9)], 5)
        assert await client.llen(limiter.prefix + "v2:t:key:1:tpm:log") == 1
        assert counted(await client.get(limiter.prefix + "v2:t:key:1:tpm:sum")) == 5
        assert limiter.failures == 0
    finally:
        await client.aclose()
        await limiter.aclose()


async def test_redis_rebuilds_a_counter_whose_log_head_is_not_the_one_its_sum_names(
    redis_server: RedisServer,
) -> None:
    # The sum names the log's oldest entry; an expired head popped that is not it (the log was
    # changed apart from its sum) goes back, and the counter is rebuilt from the log.
    limiter = shared_limiter(redis_server)
    client = Redis.from_url(redis_server.url)
    lim = RequestLimit("qps", "key:head", 10, 2.0)
    log, sum_key = (limiter.prefix + "v2:r:key:head" + part for part in (":log", ":sum"))

    async def past(at: int) -> int:
        """Wait until Redis's clock is past ``at`` (µs); return its time."""
        deadline = time.monotonic() + 10
        while True:
            seconds, micros = await client.time()
            if seconds * 1_000_000 + micros > at:
                return int(seconds * 1_000_000 + micros)
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

    try:
        assert await admitted(limiter, 1, lim) == 1
        total, length, oldest, *_ = unpacked(await client.get(sum_key), 6)
        assert (total, length) == (1, 1)
        # Half a window on, a second admission (the sum now lives on past the first's window),
        # then the log alone becomes one younger entry of 3 units: popping it as the expired one
        # the sum names would lose them.
        await past(oldest + 1_000_000)
        assert await admitted(limiter, 1, lim) == 1
        young = await past(oldest + 1_000_000)
        await client.delete(log)
        await client.rpush(log, msgspec.msgpack.encode(young) + msgspec.msgpack.encode(3))
        await past(oldest + 2_000_000)
        assert await admitted(limiter, 1, lim) == 1
        entries = [unpacked(e, 2) for e in await client.lrange(log, 0, -1)]
        assert entries[0] == [young, 3]
        assert len(entries) == 2
        assert counted(await client.get(sum_key)) == 4
        assert limiter.failures == 0
    finally:
        await client.aclose()
        await limiter.aclose()


async def test_redis_counters_keep_their_expiry_when_only_their_sum_changes(
    redis_server: RedisServer,
) -> None:
    # A sum rewritten without a new newest entry keeps its TTL (SET ... KEEPTTL): one merged into
    # its bucket; one rebuilt after it was lost needs a new TTL, whether the decision records in
    # it or not. None may ever be left without one.
    limiter = shared_limiter(redis_server)
    prefix = limiter.prefix
    client = Redis.from_url(redis_server.url)

    async def expiring(*names: str) -> None:
        for name in names:
            for part in (":log", ":sum"):
                assert 0 < await client.pttl(prefix + "v2:" + name + part) <= 62_000, name + part

    try:
        for _ in range(20):  # 20 charges, most in the same 1 s bucket
            await limiter.charge([tpm(10**9)], 3)
            await expiring("t:key:1:tpm")
        assert counted(await client.get(prefix + "v2:t:key:1:tpm:sum")) == 60
        await client.delete(prefix + "v2:t:key:1:tpm:sum")  # lost: rebuilt, with a TTL
        await limiter.charge([tpm(10**9)], 3)
        assert counted(await client.get(prefix + "v2:t:key:1:tpm:sum")) == 63
        await expiring("t:key:1:tpm")
        # Lost, then rebuilt by a decision that another limit refuses: a new TTL all the same.
        full = RequestLimit("qpm", "key:1:full", 1, 60.0)
        assert await admitted(limiter, 2, qpm(5)) == 2
        assert await admitted(limiter, 1, full) == 1
        await client.delete(prefix + "v2:r:key:1:qpm:sum")
        assert not (await limiter.acquire([qpm(5), full])).allowed
        assert counted(await client.get(prefix + "v2:r:key:1:qpm:sum")) == 2
        await expiring("r:key:1:qpm")
        assert limiter.failures == 0
    finally:
        await client.aclose()
        await limiter.aclose()


async def test_redis_a_batch_marks_the_highest_sequence_it_counted(
    redis_server: RedisServer,
) -> None:
    # 10 acquires gathered into one batch, the last 5 refused, then 3 charges: the seen mark
    # ends at the last charge's number, and a refused acquire alone moves it not.
    limiter = shared_limiter(redis_server)
    client = Redis.from_url(redis_server.url)
    seen = limiter.prefix + "seen:" + limiter.replica_id
    try:
        await limiter.start()
        decisions = await asyncio.gather(*(limiter.acquire([qpm(5)]) for _ in range(10)))
        assert [d.allowed for d in decisions] == [True] * 5 + [False] * 5
        assert await client.get(seen) == b"5"  # seq 1..10: the refused 6..10 not counted
        await asyncio.gather(*(limiter.charge([tpm(10**9)], 1) for _ in range(3)))
        assert await client.get(seen) == b"13"
        assert 0 < await client.pttl(seen) <= 61_000
        assert not (await limiter.acquire([qpm(5)])).allowed
        assert await client.get(seen) == b"13"
        assert limiter.failures == 0
    finally:
        await client.aclose()
        await limiter.aclose()


# -- MEMORY ONLY: exact time control needs an injected clock, which Redis cannot have ------------


async def test_memory_only_retry_after_is_exact_at_the_window_boundary() -> None:
    clock = ManualClock(0.0)
    limiter = MemoryLimiter(clock=clock)
    for _ in range(3):
        assert (await limiter.acquire([qps(3)])).allowed
        clock.advance(0.25)
    refused = await limiter.acquire([qps(3)])
    assert refused.retry_after == 0.25
    clock.advance(0.25 - 2.0**-20)
    assert not (await limiter.acquire([qps(3)])).allowed
    clock.advance(2.0**-20)
    assert (await limiter.acquire([qps(3)])).allowed


async def test_memory_only_no_window_holds_twice_the_limit_across_a_boundary() -> None:
    clock = ManualClock(0.875)
    limiter = MemoryLimiter(clock=clock)
    assert await admitted(limiter, 10, qps(10)) == 10
    clock.advance(0.25)  # past the whole-second boundary a fixed window would reset on
    assert await admitted(limiter, 10, qps(10)) == 0
