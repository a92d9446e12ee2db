"""RedisLimiter's failover at its edges, on real redis-servers (#18: the survivors of redis.py).

Beside ``test_ratelimit_failover.py`` (whose helpers these tests use): what each transition logs
and counts, a Redis emptied while the limiter believes it up (the ``-1`` answer), two outages that
keep Redis's data (``maxmemory`` below what Redis holds: every write is refused with OOM, an
outage whose calls Redis never ran) around decisions made in between, the short second replay of
what was decided while the first was on the wire, the wait of the exact policies for every
replica at the horizon's edge, the hand-back window's edges on an injected clock, and the log
entries of a limit of exactly ``exact_max`` and of a bucketed one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from keyplane.ratelimit import (
    FailurePolicy,
    ManualClock,
    RedisLimiter,
    RedisLimiterSettings,
    RequestLimit,
    TokenLimit,
)
from tests.contract.test_ratelimit_failover import (
    admitted,
    redis_count,
    replicas,
    sample,
    settings,
    until,
)
from tests.support.limits import qpm
from tests.support.procs import free_port
from tests.support.redis import RedisServer, counted, unpacked

LOGGER = "keyplane.ratelimit.redis"


@asynccontextmanager
async def admin(server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def token_count(server: RedisServer, prefix: str, counter: str) -> int:
    async with admin(server) as client:
        return counted(await client.get(f"{prefix}v2:t:{counter}:sum"))


async def entries(client: Redis, key: str) -> list[list[int]]:
    """A counter's log, as Redis holds it: ``[µs, units]`` per entry."""
    return [unpacked(e, 2) for e in await client.lrange(key, 0, -1)]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
    ]


async def stop_probe(limiter: RedisLimiter) -> None:
    """Cancel the limiter's health probe: the test drives its recovery (``_recover``) itself."""
    monitor = limiter._monitor
    assert monitor is not None
    monitor.cancel()
    with pytest.raises(asyncio.CancelledError):
        await monitor


async def test_each_transition_is_logged_and_counted_and_each_wait_observed(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    # No heartbeat within the test: each outage is found by the call the test makes.
    async with replicas(server, FailurePolicy.LOCAL, count=1, heartbeat=60.0) as (a,):
        limit = qpm(10)
        waits = sample("keyplane_ratelimit_redis_wait_seconds_count")
        waited = sample("keyplane_ratelimit_redis_wait_seconds_sum")
        started = time.perf_counter()
        assert (await a.acquire([limit])).allowed
        elapsed = time.perf_counter() - started
        assert sample("keyplane_ratelimit_redis_wait_seconds_count") == waits + 1
        assert 0 < sample("keyplane_ratelimit_redis_wait_seconds_sum") - waited <= elapsed
        assert warnings_of(caplog) == []

        ups = sample("keyplane_ratelimit_transitions_total", {"to": "up"})
        server.stop()
        lost = time.monotonic()
        started = time.perf_counter()
        decision = await a.acquire([limit])
        elapsed = time.perf_counter() - started
        assert decision.degraded
        # A call that failed was waited for too.
        assert sample("keyplane_ratelimit_redis_wait_seconds_count") == waits + 2
        assert 0 < sample("keyplane_ratelimit_redis_wait_seconds_sum") - waited <= 2 * elapsed + 1
        (down,) = warnings_of(caplog)
        assert down.startswith("redis unusable (ConnectionError: "), down
        assert down.endswith("); rate limits now follow the 'local' failure policy"), down

        server.start()
        await until(lambda: a.available, "the limiter back on Redis")
        back = time.monotonic()
        assert sample("keyplane_ratelimit_transitions_total", {"to": "up"}) == ups + 1
        _, up = warnings_of(caplog)
        match = re.fullmatch(
            r"redis reachable again after (\d+\.\d\d) s; replica ([0-9a-f]{8}) replayed its "
            r"decisions and hands rate limits back to Redis",
            up,
        )
        assert match is not None, up
        assert 0 < float(match[1]) <= back - lost + 0.01
        assert match[2] == a.replica_id[:8]

        server.stop()  # a charge finds this outage
        await a.charge([TokenLimit("tpm", "key:1:tpm", 1000)], 5)
        assert not a.available
        down = warnings_of(caplog)[-1]
        assert down.startswith("redis unusable (ConnectionError: "), down


async def test_a_redis_emptied_while_up_is_found_by_the_next_call_and_replayed_whole(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # FLUSHALL between two calls: the server stays up, so no connection error tells the limiter;
    # the epoch it knows is gone, and the acquire (then the charge) script answers -1.
    caplog.set_level(logging.WARNING, logger=LOGGER)
    lost = "redis unusable (Redis lost the rate-limit state it held); rate limits now follow "
    async with (
        replicas(server, FailurePolicy.LOCAL, count=1, heartbeat=60.0) as (a,),
        admin(server) as client,
    ):
        limit, tokens = qpm(10), [TokenLimit("tpm", "key:1:tpm", 1000)]
        assert len(await admitted(a, 3, limit)) == 3
        await a.charge(tokens, 100)
        await client.flushall()
        decision = await a.acquire([limit])
        assert decision.allowed
        assert decision.degraded
        assert not a.available
        assert warnings_of(caplog) == [lost + "the 'local' failure policy"]
        await until(lambda: a.available, "the limiter back on Redis")
        # Everything this replica decided in the window, replayed into the empty Redis.
        assert await redis_count(server, a.prefix, "key:1:qpm") == 4
        assert await token_count(server, a.prefix, "key:1:tpm") == 100

        await client.flushall()
        await a.charge(tokens, 50)
        assert not a.available
        assert warnings_of(caplog)[-1] == lost + "the 'local' failure policy"
        await until(lambda: a.available, "the limiter back on Redis again")
        assert await redis_count(server, a.prefix, "key:1:qpm") == 4
        assert await token_count(server, a.prefix, "key:1:tpm") == 150


@asynccontextmanager
async def out_of_memory(client: Redis) -> AsyncIterator[None]:
    """Redis refuses every write (OOM) but keeps its data: an outage whose calls it never ran."""
    await client.config_set("maxmemory", 1)
    try:
        yield
    finally:
        await client.config_set("maxmemory", 0)


@pytest.mark.parametrize("policy", [FailurePolicy.ALLOW, FailurePolicy.LOCAL])
async def test_two_outages_replay_each_decision_made_around_them_exactly_once(
    server: RedisServer, policy: FailurePolicy
) -> None:
    async with (
        replicas(server, policy, count=1, heartbeat=60.0) as (a,),
        admin(server) as client,
    ):
        limit, tokens = qpm(50), [TokenLimit("tpm", "key:1:tpm", 10_000)]
        requests = charged = 0
        for _ in range(2):
            assert len(await admitted(a, 3, limit)) == 3  # through Redis
            await a.charge(tokens, 10)
            assert a.available
            async with out_of_memory(client):
                await a.charge(tokens, 5)  # refused: Redis is down from here
                assert not a.available
                local = await admitted(a, 2, limit)
                assert len(local) == 2
                assert all(d.degraded for d in local)
                await a.charge(tokens, 7)
            await until(lambda: a.available, "the limiter back on Redis")
            requests, charged = requests + 5, charged + 22
            # Redis kept what it had, and got each decision of the outage once.
            assert await redis_count(server, a.prefix, "key:1:qpm") == requests
            assert await token_count(server, a.prefix, "key:1:tpm") == charged


class ReplayLog:
    """Wraps a limiter's ``_replay``: records each call's arguments, and can hold the second."""

    def __init__(self, limiter: RedisLimiter) -> None:
        self.calls: list[tuple[bool, float | None]] = []
        self.hold_second = False
        self.second = asyncio.Event()
        self.release = asyncio.Event()
        self._replay = limiter._replay

    async def __call__(self, *, complete: bool, patience: float | None = None) -> tuple[int, int]:
        self.calls.append((complete, patience))
        if self.hold_second and len(self.calls) == 2:
            self.second.set()
            await self.release.wait()
        return await self._replay(complete=complete, patience=patience)


async def test_decisions_made_during_a_replay_go_in_a_short_second_one_before_redis_decides(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    timeout = 2.0
    async with (
        replicas(server, FailurePolicy.LOCAL, count=1, heartbeat=60.0, timeout=timeout) as (a,),
        admin(server) as client,
    ):
        await stop_probe(a)
        replays = ReplayLog(a)
        monkeypatch.setattr(a, "_replay", replays)
        limit = qpm(20)
        assert len(await admitted(a, 2, limit)) == 2
        replayed = sample("keyplane_ratelimit_replayed_entries_total")

        # An outage with nothing decided during its replay: one replay, and Redis decides again.
        async with out_of_memory(client):
            assert (await a.acquire([limit])).degraded
        assert await a._recover() is True
        assert a.available
        assert replays.calls == [(False, None)]

        async with out_of_memory(client):
            assert (await a.acquire([limit])).degraded
        replays.calls.clear()
        replays.hold_second = True
        server.pause()
        try:
            recovering = asyncio.create_task(a._recover())
            await until(lambda: len(replays.calls) == 1, "the first replay on the wire")
            # Decided locally while Redis has not answered that replay: not in it.
            local = await admitted(a, 3, limit)
            assert [d.degraded for d in local] == [True] * 3
        finally:
            server.resume()
        await replays.second.wait()
        # The second replay is on its way: a decision waits for it, then goes through Redis.
        waiting = asyncio.create_task(a.acquire([limit]))
        replays.release.set()
        assert await recovering is True
        decision = await waiting
        assert decision.allowed
        assert not decision.degraded
        assert replays.calls == [(False, None), (False, timeout)]
        assert a.available
        assert await redis_count(server, a.prefix, "key:1:qpm") == 2 + 1 + 1 + 3 + 1
        # The entries sent: the two outages' single decisions, then the 3 of the second replay.
        assert sample("keyplane_ratelimit_replayed_entries_total") - replayed == 1 + 1 + 3


async def test_a_redis_emptied_during_the_second_replay_is_replayed_whole_before_deciding(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        replicas(server, FailurePolicy.LOCAL, count=1, heartbeat=60.0) as (a,),
        admin(server) as client,
    ):
        await stop_probe(a)
        replays = ReplayLog(a)
        replays.hold_second = True
        monkeypatch.setattr(a, "_replay", replays)
        limit = qpm(20)
        assert len(await admitted(a, 2, limit)) == 2
        async with out_of_memory(client):
            assert (await a.acquire([limit])).degraded
        server.pause()
        try:
            recovering = asyncio.create_task(a._recover())
            await until(lambda: len(replays.calls) == 1, "the first replay on the wire")
            assert (await a.acquire([limit])).degraded
        finally:
            server.resume()
        await replays.second.wait()
        await client.flushall()
        replays.release.set()
        assert await recovering is False  # the short replay found a new epoch: not up yet
        assert not a.available
        assert await a._recover() is True
        assert await redis_count(server, a.prefix, "key:1:qpm") == 4


async def test_exact_policies_wait_for_every_replica_until_the_horizon_and_not_after(
    server: RedisServer,
) -> None:
    clock = ManualClock(1000.0)
    prefix = f"test:{uuid.uuid4().hex}:"
    made = [
        RedisLimiter.from_url(
            server.url, settings(FailurePolicy.DENY, prefix, heartbeat=60.0), clock=clock
        )
        for _ in range(2)
    ]
    a, b = made
    try:
        for limiter in made:
            await limiter.start()
            await stop_probe(limiter)
        limit = qpm(10)
        assert len(await admitted(b, 4, limit)) == 4
        assert len(await admitted(a, 2, limit)) == 2
        server.stop()
        assert not (await a.acquire([limit])).allowed  # lost at 1000.0
        server.start()  # empty; b never replays
        clock.advance(59.0)
        assert await a._recover() is False  # b's 4 may still be in the window
        assert not a.available
        clock.advance(1.0)  # the horizon (the qpm's minute) has passed since the loss
        assert await a._recover() is True
        assert a.available

        # A second outage, Redis keeping its data: no need to wait for b (still not replayed).
        async with admin(server) as client, out_of_memory(client):
            assert not (await a.acquire([qpm(10, "key:2:qpm")])).allowed
        assert await a._recover() is True
        assert a.available
    finally:
        for limiter in made:
            await limiter.aclose()


async def test_the_hand_back_keeps_each_limit_to_its_share_until_its_window_ends(
    server: RedisServer,
) -> None:
    # The hand-back lasts max(horizon, floor) from the return; each limit is kept to its share for
    # max(its window, floor) of it. floor = 2 * probe_max + max(1, 4 * timeout) = 0.5 + 4 = 4.5 s.
    clock = ManualClock(1000.0)
    extra: dict[str, Any] = {"timeout": 1.0, "probe_max": 0.25, "heartbeat": 60.0}
    limiter = RedisLimiter.from_url(
        server.url,
        settings(FailurePolicy.LOCAL, f"test:{uuid.uuid4().hex}:", **extra),
        clock=clock,
    )
    qps = RequestLimit("qps", "key:1:qps", 4, 1.0)  # shares of 2 (two replicas)
    minute = RequestLimit("qpm", "key:1:qpm", 2, 60.0)  # a share of 1
    ten = TokenLimit("t10", "key:1:t10", 200, 10.0)  # shares of 100
    five = TokenLimit("t5", "key:1:t5", 200, 5.0)
    try:
        await limiter.start()
        async with admin(server) as client, out_of_memory(client):
            await limiter.charge([ten], 150)  # at 1000: over the local share of 100
            assert not limiter.available
            clock.advance(6.0)
        await until(lambda: limiter.available, "the limiter back on Redis")
        # Back at 1006, the horizon 10 s (the journal's longest window): the hand-back ends at
        # 1016. Redis (its own clock, real seconds) never holds more than 150 of 200 tokens.
        clock.advance(1.0)
        refused = await limiter.acquire([], [ten])
        assert not refused.allowed  # its share, counting the 150 charged at 1000
        assert refused.tokens is not None
        assert refused.tokens.limit == 100
        await limiter.charge([five], 150)  # at 1007, through Redis and into the share
        assert (await limiter.acquire([minute])).allowed  # a share of 1, used at 1007
        clock.advance(3.0)
        assert len(await admitted(limiter, 2, qps)) == 2  # the share of 2, at 1010
        assert not (await limiter.acquire([qps])).allowed  # 4 s in: qps is held by the floor
        clock.advance(0.5)  # 4.5 s since the return: past qps's window and the floor
        assert (await limiter.acquire([qps])).allowed
        clock.advance(0.5)  # 1011: t5's window has ended; t10's share counts only its window
        assert (await limiter.acquire([], [five])).allowed
        assert (await limiter.acquire([], [ten])).allowed
        clock.advance(5.0)  # 1016: the hand-back is over, though qpm's minute is not
        assert (await limiter.acquire([minute])).allowed
        assert limiter.failures == 0
    finally:
        await limiter.aclose()


async def test_a_limit_of_exactly_exact_max_is_logged_exactly_and_larger_ones_in_buckets(
    server: RedisServer,
) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    width = 60_000_000 // 7  # µs: 60 s over 7 buckets, not a whole number of them
    limiter = RedisLimiter.from_url(
        server.url,
        RedisLimiterSettings(prefix=prefix, timeout=5.0, exact_max=4, buckets=7, token_buckets=7),
    )
    exact = RequestLimit("qpm", "key:exact", 4, 60.0)
    bucketed = RequestLimit("qpm", "key:bucketed", 5, 60.0)
    tokens = TokenLimit("tpm", "key:tpm", 1000, 60.0)
    try:
        for _ in range(4):
            decision = await limiter.acquire([exact])
            assert decision.allowed
            assert decision.requests is not None
            assert decision.requests.reset_after <= 60.0
        last = await limiter.acquire([bucketed])
        assert last.requests is not None
        assert 60.0 < last.requests.reset_after <= 60.0 + width / 1e6
        await limiter.charge([tokens], 7)
        async with admin(server) as client:
            logged = await entries(client, prefix + "v2:r:key:exact:log")
            assert len(logged) == 4  # one entry per admission, at its microsecond
            assert [units for _, units in logged] == [1, 1, 1, 1]
            for key in ("v2:r:key:bucketed:log", "v2:t:key:tpm:log"):
                ((at, _),) = await entries(client, prefix + key)
                assert at % width == 0, (key, at)  # a bucket's end
        assert limiter.failures == 0
    finally:
        await limiter.aclose()


async def test_an_idle_limiter_finds_each_outage_by_its_heartbeat_and_backs_off_without_error(
    server: RedisServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    async with (
        replicas(server, FailurePolicy.LOCAL, count=1, heartbeat=0.1) as (a,),
        admin(server) as client,
    ):
        replays = ReplayLog(a)
        monkeypatch.setattr(a, "_replay", replays)
        assert (await a.acquire([qpm(10)])).allowed  # then no call: only the heartbeat
        server.stop()
        await until(lambda: not a.available, "the heartbeat finding Redis gone")
        (down,) = warnings_of(caplog)
        assert down.startswith("redis unusable (health probe: ConnectionError: "), down
        # Probes, backing off, each refused: none is a failure of the probe itself.
        replays.calls.clear()
        await until(lambda: len(replays.calls) >= 4, "four probes while Redis is gone")
        server.start()
        await until(lambda: a.available, "the limiter back on Redis")

        await client.flushall()  # the server stays up: only the replay can tell
        await until(lambda: not a.available, "the heartbeat finding Redis emptied")
        lost = warnings_of(caplog)[-1]
        assert lost.startswith("redis unusable (Redis lost the rate-limit state it held); "), lost
        await until(lambda: a.available, "the limiter back on the emptied Redis")
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_failing_probe_is_logged_and_probes_on(
    server: RedisServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    async with replicas(server, FailurePolicy.LOCAL, count=1, heartbeat=60.0) as (a,):
        recover = a._recover
        failed = asyncio.Event()

        async def buggy() -> bool:  # a bug in the probe's first try, not an outage
            if not failed.is_set():
                failed.set()
                raise RuntimeError("a bug")
            return await recover()

        monkeypatch.setattr(a, "_recover", buggy)
        async with admin(server) as client, out_of_memory(client):
            assert (await a.acquire([qpm(10)])).degraded
            await failed.wait()
        await until(lambda: a.available, "the probe going on after its failure")
        (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert record.getMessage() == "rate-limit health probe failed"
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], RuntimeError)


async def test_concurrent_first_calls_meet_redis_once(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = RedisLimiter.from_url(
        server.url, settings(FailurePolicy.LOCAL, f"test:{uuid.uuid4().hex}:", heartbeat=60.0)
    )
    replays = ReplayLog(limiter)
    monkeypatch.setattr(limiter, "_replay", replays)
    try:
        decisions = await asyncio.gather(*(limiter.acquire([qpm(10)]) for _ in range(3)))
        assert all(d.allowed and not d.degraded for d in decisions)
        assert replays.calls == [(False, None)]  # the first call's: the others waited for it
    finally:
        await limiter.aclose()


async def test_a_limiter_that_cannot_meet_redis_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    limiter = RedisLimiter.from_url(
        f"redis://127.0.0.1:{free_port()}/0",
        settings(FailurePolicy.DENY, "test:", heartbeat=60.0),
    )
    try:
        await limiter.start()
        assert not limiter.available
        (down,) = warnings_of(caplog)
        assert down.startswith("redis unusable (ConnectionError: "), down
        assert down.endswith("); rate limits now follow the 'deny' failure policy"), down
    finally:
        await limiter.aclose()


async def test_a_batch_answered_after_the_outage_was_found_restarts_the_blackout(
    server: RedisServer,
) -> None:
    # local-strict refuses for one window after Redis was last known to decide: a batch sent
    # before the outage was found and answered after it moves that moment to its answer.
    clock = ManualClock(1000.0)
    timeout = 2.0  # the second batch's margin: a second, on a loaded machine
    limiter = RedisLimiter.from_url(
        server.url,
        settings(
            FailurePolicy.LOCAL_STRICT,
            f"test:{uuid.uuid4().hex}:",
            timeout=timeout,
            heartbeat=60.0,
        ),
        clock=clock,
    )
    qps = RequestLimit("qps", "key:1:qps", 100, 1.0)
    try:
        await limiter.start()
        await stop_probe(limiter)
        assert (await limiter.acquire([qps])).allowed
        server.pause()
        try:
            first = asyncio.ensure_future(limiter.acquire([qps]))
            # Not a race to paper over: the second batch must leave half a timeout later, so
            # that Redis can answer it after the first has timed out.
            await asyncio.sleep(timeout / 2)
            second = asyncio.ensure_future(limiter.acquire([qps]))
            assert (await first).degraded  # the first batch timed out: Redis is down (1000.0)
            clock.advance(0.25)
        finally:
            server.resume()
        late = await second
        assert late.allowed
        assert not late.degraded  # Redis decided it, at 1000.25
        clock.advance(0.5)
        refused = await limiter.acquire([qps])
        assert refused.degraded
        assert refused.retry_after == pytest.approx(0.5)  # a window from 1000.25, not 1000.0
    finally:
        await limiter.aclose()


async def test_probes_back_off_by_doubling_from_probe_min_to_probe_max(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with replicas(
        server, FailurePolicy.LOCAL, count=1, heartbeat=60.0, probe_min=0.1, probe_max=2.0
    ) as (a,):
        loop = asyncio.get_running_loop()
        recover = a._recover
        probes: list[float] = []

        async def timed() -> bool:
            probes.append(loop.time())
            return await recover()

        monkeypatch.setattr(a, "_recover", timed)
        server.stop()
        assert (await a.acquire([qpm(10)])).degraded
        await until(lambda: len(probes) >= 5, "five probes of a Redis that is gone")
        gaps = [later - earlier for earlier, later in itertools.pairwise(probes[:5])]
        # At least the doubled delay each (0.2, 0.4, 0.8, 1.6 s: asyncio.sleep never wakes
        # early), and not much more in all: a backoff by 3, or one straight to probe_max, takes
        # 2 s more than these 3 s.
        for gap, delay in zip(gaps, (0.2, 0.4, 0.8, 1.6), strict=True):
            assert gap >= delay - 0.005, gaps
        assert sum(gaps) < 3.0 + 1.0, gaps
        server.start()
        await until(lambda: a.available, "the limiter back on Redis")


async def held_by_pause(client: Redis) -> bool:
    """Whether a client but ``client`` waits in Redis for ``CLIENT PAUSE`` to end."""
    return any("b" in c["flags"] for c in await client.client_list())


@pytest.mark.parametrize("redis_py", [False, True], ids=["own-client", "redis-py"])
async def test_a_connection_broken_under_a_call_is_retried_once_and_is_no_outage(
    server: RedisServer, redis_py: bool
) -> None:
    # After a restart or a failover every pooled connection is dead: from_url's client sends a
    # call once more on a fresh connection when its own breaks, rather than counting an outage.
    # Here Redis holds the call unrun (CLIENT PAUSE WRITE), then closes the connection under it.
    async with (
        replicas(server, FailurePolicy.LOCAL, count=1, redis_py=redis_py, heartbeat=60.0) as (a,),
        admin(server) as client,
    ):
        limit = qpm(10)
        assert (await a.acquire([limit])).allowed
        await client.client_pause(10_000, all=False)
        try:
            call = asyncio.ensure_future(a.acquire([limit]))
            await until(lambda: held_by_pause(client), "the call held by Redis")
            assert await client.client_kill_filter(_type="normal", skipme=True) == 1
        finally:
            await client.client_unpause()
        decision = await call
        assert decision.allowed
        assert not decision.degraded
        assert a.available
        assert await redis_count(server, a.prefix, "key:1:qpm") == 2


@asynccontextmanager
async def on_own_client(server: RedisServer, **extra: Any) -> AsyncIterator[RedisLimiter]:
    """A started limiter (no probe) on a client of the caller's own with no socket timeout, so
    the limiter's own bounds are all there is (from_url's client has the decisions' timeout on
    its socket too)."""
    client = Redis.from_url(server.url)
    limiter = RedisLimiter(
        client,
        settings(FailurePolicy.LOCAL, f"test:{uuid.uuid4().hex}:", heartbeat=60.0, **extra),
    )
    try:
        await limiter.start()
        await stop_probe(limiter)
        yield limiter
    finally:
        await limiter.aclose()
        await client.aclose()


async def recover_from_a_late_redis(
    server: RedisServer, limiter: RedisLimiter, limit: RequestLimit, late: float
) -> float:
    """One admission through Redis, one by the policy during an outage (OOM), then the limiter's
    recovery (no probe of its own) from a Redis stopped and continued by a timer ``late`` seconds
    later: how long the recovery took."""
    loop = asyncio.get_running_loop()
    assert (await limiter.acquire([limit])).allowed
    async with admin(server) as client, out_of_memory(client):
        assert (await limiter.acquire([limit])).degraded
    server.pause()
    resume = loop.call_later(late, server.resume)
    try:
        started = loop.time()
        assert await limiter._recover() is True
        return loop.time() - started
    finally:
        resume.cancel()
        server.resume()


async def test_a_replay_waits_for_redis_up_to_its_patience_not_the_decisions_timeout(
    server: RedisServer,
) -> None:
    # A replay is off the request path and may carry a window's worth of entries: it waits
    # max(1 s, 4 x timeout). Redis stopped and continued after twice the timeout (by a timer)
    # still takes it, and the limiter is back.
    timeout = 0.5  # a replay's patience: 2 s
    async with on_own_client(server, timeout=timeout) as limiter:
        limit = qpm(10)
        waited = await recover_from_a_late_redis(server, limiter, limit, 2 * timeout)
        assert waited > 2 * timeout - 0.01
        assert limiter.available
        assert await redis_count(server, limiter.prefix, "key:1:qpm") == 2
        # A decision still waits no longer than the timeout: nothing else bounds it here.
        server.pause()
        try:
            async with asyncio.timeout(4 * timeout):
                assert (await limiter.acquire([limit])).degraded
        finally:
            server.resume()


async def test_a_replay_gives_up_at_its_patience_of_at_least_a_second(server: RedisServer) -> None:
    # A replay's patience: max(1 s, 4 x 0.2 s) = 1 s.
    async with on_own_client(server, timeout=0.2) as limiter:
        server.pause()
        try:
            async with asyncio.timeout(1.9):
                with pytest.raises(TimeoutError, match=r"^no answer from Redis within 1\.0 s$"):
                    await limiter._recover()
        finally:
            server.resume()


@pytest.mark.parametrize("redis_py", [False, True], ids=["own-client", "redis-py"])
async def test_a_replay_through_from_urls_client_waits_up_to_its_patience_too(
    server: RedisServer, redis_py: bool
) -> None:
    # from_url's client (the one keyplane makes for every limiter) has the decisions' timeout on
    # its sockets: a replay's commands still wait up to the replay's patience, or a replay that
    # Redis answers later than the timeout (a window's worth of entries on a busy Redis) would
    # fail every probe, and the limiter would stay on its failure policy for good.
    timeout = 0.5  # a replay's patience: 2 s
    loop = asyncio.get_running_loop()
    extra = {"timeout": timeout, "heartbeat": 60.0}
    async with replicas(server, FailurePolicy.ALLOW, count=1, redis_py=redis_py, **extra) as (a,):
        await stop_probe(a)
        limit = qpm(3)
        assert await recover_from_a_late_redis(server, a, limit, 2 * timeout) > 2 * timeout - 0.01
        assert a.available
        assert await redis_count(server, a.prefix, "key:1:qpm") == 2
        # Redis decides again, counting the replayed admission: the third is the last.
        third, fourth = await a.acquire([limit]), await a.acquire([limit])
        assert (third.allowed, third.degraded) == (True, False)
        assert (fourth.allowed, fourth.degraded) == (False, False)
        # A decision still gives up at the timeout, well before the replay's patience.
        server.pause()
        try:
            started = loop.time()
            assert (await a.acquire([limit])).degraded
            assert loop.time() - started < 3 * timeout
        finally:
            server.resume()


async def test_a_limiter_that_never_met_redis_replays_every_decision_of_its_policy(
    server: RedisServer,
) -> None:
    # Redis is gone before the first call: no decision is counted there, and every one goes in.
    server.stop()
    async with replicas(server, FailurePolicy.LOCAL, count=1, heartbeat=60.0) as (a,):
        assert not a.available
        await stop_probe(a)
        limit = qpm(10)
        assert [d.degraded for d in await admitted(a, 2, limit)] == [True, True]
        server.start()
        assert await a._recover() is True
        assert await redis_count(server, a.prefix, "key:1:qpm") == 2


async def test_an_exact_policy_takes_redis_back_at_once_from_an_outage_that_kept_the_data(
    server: RedisServer,
) -> None:
    # Only a Redis that lost its data makes deny and local-strict wait for the other replicas'
    # replays; after an outage that kept it (the first one too), Redis decides again at once.
    async with (
        replicas(server, FailurePolicy.DENY, count=1, heartbeat=60.0) as (a,),
        admin(server) as client,
    ):
        await stop_probe(a)
        limit = qpm(10)
        assert (await a.acquire([limit])).allowed
        async with out_of_memory(client):
            assert (await a.acquire([limit])).degraded
        assert await a._recover() is True  # the other replica of two has not replayed: no need
        assert a.available


async def test_redis_holds_the_epoch_and_each_replicas_seen_mark_under_the_prefix(
    server: RedisServer,
) -> None:
    # The key layout (docs/architecture.md): replicas running different versions during an
    # upgrade share one Redis, so the names are part of the contract between them.
    async with (
        replicas(server, FailurePolicy.LOCAL, heartbeat=60.0) as (a, b),
        admin(server) as client,
    ):
        for limiter in (a, b):
            assert (await limiter.acquire([qpm(10)])).allowed
        epoch = await client.get(a.prefix + "epoch")
        assert isinstance(epoch, bytes)
        assert epoch.decode() == a._epoch == b._epoch
        for limiter in (a, b):
            assert await client.get(f"{a.prefix}seen:{limiter.replica_id}") is not None
            assert await client.pttl(f"{a.prefix}seen:{limiter.replica_id}") > 0
