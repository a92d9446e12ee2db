"""RedisLimiter's auto-pipelining keeps at most two batches on the wire (#18: `_submit`/`_flush`).

Beside ``test_ratelimit_pipelining.py`` (whose helpers these use): the calls of one turn go as
one batch after another, never two at once, and calls made while two batches are unanswered wait
and go together in the next — counted by the script calls Redis ran; from_url's client pipelines
them all on one connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from keyplane.ratelimit import Decision, RedisLimiter, RequestLimit, TokenLimit
from tests.contract.test_ratelimit_failover import until
from tests.contract.test_ratelimit_pipelining import limiter, script_calls
from tests.support.redis import RedisServer, counted, paused

QPM = RequestLimit("qpm", "key:1:qpm", 1000, 60.0)


@asynccontextmanager
async def warmed(server: RedisServer, **extra: Any) -> AsyncIterator[tuple[RedisLimiter, Redis]]:
    """A limiter that has made one call (Redis holds its batch script: no NOSCRIPT round trip
    later) and no heartbeat within the test, beside a client of the test's own."""
    shared = limiter(server, heartbeat=60.0, **extra)
    client = Redis.from_url(server.url)
    try:
        await shared.start()
        assert (await shared.acquire([QPM])).allowed
        yield shared, client
    finally:
        await client.aclose()
        await shared.aclose()


async def turns() -> None:
    """Lets the calls just made run to their flush and send (a few turns of the loop)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def connections(client: Redis) -> int:
    """The server's client connections but ``client``'s own."""
    me = await client.client_id()
    return sum(1 for c in await client.client_list() if int(c["id"]) != me)


async def test_the_calls_of_one_turn_go_one_batch_after_another(server: RedisServer) -> None:
    async with warmed(server) as (shared, client):
        before = await script_calls(client)
        decisions = await asyncio.gather(*(shared.acquire([QPM]) for _ in range(300)))
        assert all(d.allowed for d in decisions)
        assert await script_calls(client) - before == 3  # 128, 128 and 44
        # The second batch went when the first was answered: one connection served them all.
        assert await connections(client) == 1
        await until(lambda: not shared._batches, "the batches forgotten once answered")


async def test_calls_made_while_two_batches_are_unanswered_go_together_in_the_next(
    server: RedisServer,
) -> None:
    async with warmed(server) as (shared, client):
        before = await script_calls(client)
        server.pause()
        try:
            calls = []
            for _ in range(6):  # each in a turn of its own, sent if a batch may go
                calls.append(asyncio.ensure_future(shared.acquire([QPM])))
                await turns()
        finally:
            server.resume()
        decisions = await asyncio.gather(*calls)
        assert all(d.allowed and not d.degraded for d in decisions)
        # The first two calls went alone; the other four waited for one of them, then went as one.
        assert await script_calls(client) - before == 3
        assert await connections(client) == 1  # the two batches on the wire, pipelined


async def test_a_call_queued_behind_two_late_batches_waits_no_longer_than_its_own_timeout(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A call's time runs from when it is made, queueing included: two batches that a paused
    # Redis answers half a timeout late hold it back, then Redis stalls on its own batch. It
    # fails at its deadline, not a whole timeout after its batch left.
    timeout = 2.0
    async with warmed(server, timeout=timeout) as (shared, _):
        # Two batches on the wire first (with redis-py's pool: two connections, each waiting for
        # Redis to answer its handshake).
        server.pause()
        try:
            warm = [asyncio.ensure_future(shared.acquire([QPM]))]
            await turns()
            warm.append(asyncio.ensure_future(shared.acquire([QPM])))
            await turns()
        finally:
            server.resume()
        assert all(not d.degraded for d in await asyncio.gather(*warm))
        script = shared._batch_script
        sent = 0
        ahead: list[asyncio.Future[Decision]] = []

        async def stalling(*, keys: Any, args: Any) -> Any:
            nonlocal sent
            sent += 1
            if sent == 3:  # once the two ahead are answered, Redis stalls on this batch
                await asyncio.wait(ahead)
                server.pause()
            return await script(keys=keys, args=args)

        monkeypatch.setattr(shared, "_batch_script", stalling)
        loop = asyncio.get_running_loop()
        server.pause()
        try:
            ahead.append(asyncio.ensure_future(shared.acquire([QPM])))  # on the wire alone
            await turns()
            ahead.append(asyncio.ensure_future(shared.acquire([QPM])))
            await turns()
            made = loop.time()
            queued = asyncio.ensure_future(shared.acquire([QPM]))  # two batches on the wire
            await turns()
            assert sent == 2
            await asyncio.sleep(timeout / 2)  # the scenario's delay: Redis answers late
            server.resume()
            for call in ahead:
                decision = await call
                assert decision.allowed
                assert not decision.degraded
            async with asyncio.timeout(3 * timeout):
                late = await queued
            waited = loop.time() - made
        finally:
            server.resume()
        assert sent == 3
        assert late.degraded
        # At its deadline (the mutants of its bound: a whole timeout after its batch left).
        assert timeout - 0.01 < waited < timeout * 1.25


async def test_a_script_error_fails_the_calls_of_its_batch_and_not_those_queued_behind(
    server: RedisServer,
) -> None:
    # Not an outage: a key of the wrong type makes Redis refuse the batch's script, so its calls
    # raise that error (a bug to surface), Redis stays in use, and the next batch is not touched.
    bad = RequestLimit("qpm", "key:2:qpm", 1000, 60.0)
    async with warmed(server) as (shared, client):
        await client.set(shared.prefix + "v2:r:key:2:qpm:log", "not a list")
        server.pause()
        try:
            first = asyncio.ensure_future(shared.acquire([QPM]))  # on the wire alone
            await turns()
            second = [asyncio.ensure_future(shared.acquire([lim])) for lim in (bad, QPM)]
            await turns()
            queued = asyncio.ensure_future(shared.acquire([QPM]))  # two batches on the wire
            await turns()
        finally:
            server.resume()
        async with asyncio.timeout(10):
            assert (await first).allowed
            for call in second:
                with pytest.raises(ResponseError, match="WRONGTYPE"):
                    await call
            assert (await queued).allowed
        assert shared.available
        assert shared.failures == 0


async def test_a_flush_that_finds_nothing_pending_sends_nothing(server: RedisServer) -> None:
    # A batch failing with an outage takes the calls queued behind it along (they meet the same
    # Redis), so a flush already due can find the queue empty: it must not send an empty batch.
    async with warmed(server) as (shared, _):
        await until(lambda: not shared._batches, "the warm-up's batch forgotten")
        assert shared._in_flight == 0
        shared._flush_due = True
        shared._flush()
        assert not shared._flush_due
        assert shared._in_flight == 0
        assert not shared._batches
        assert (await shared.acquire([QPM])).allowed
        assert shared._in_flight == 0


async def cancelled_on_its_way(shared: RedisLimiter) -> None:
    """One call whose batch is cancelled on its way: the call ends cancelled, and the batch no
    longer counts as on the wire."""
    call = asyncio.ensure_future(shared.acquire([QPM]))
    await until(lambda: len(shared._batches) == 1, "the batch on its way")
    assert shared._in_flight == 1
    (batch,) = shared._batches
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await until(lambda: not shared._batches, "the cancelled batch forgotten")
    assert shared._in_flight == 0


async def test_a_batch_cancelled_on_its_way_cancels_its_calls_and_gives_its_place_back(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing in the limiter cancels a batch, but if something did (a loop shutting down), its
    # calls end cancelled and the batch no longer counts as on the wire.
    async with warmed(server) as (shared, _):
        release = asyncio.Event()

        async def stalled(*, keys: Any, args: Any) -> Any:
            await release.wait()

        monkeypatch.setattr(shared, "_batch_script", stalled)  # the task path
        await cancelled_on_its_way(shared)
        release.set()


async def test_a_batch_whose_answer_is_cancelled_cancels_its_calls_and_gives_its_place_back(
    server: RedisServer,
) -> None:
    # The same on from_url's own client, whose batch is a call on the wire, not a task.
    async with warmed(server) as (shared, _):
        with paused(server):
            await cancelled_on_its_way(shared)


async def test_a_call_whose_time_ran_out_before_its_batch_could_go_is_an_outage_named_so(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The event loop held up past a call's timeout between the call and its batch's flush (a
    # stalled loop): the batch is not sent, and the outage's reason says what ran out.
    async with warmed(server, timeout=0.2) as (shared, _):
        loop = asyncio.get_running_loop()
        call = asyncio.ensure_future(shared.acquire([QPM]))
        loop.call_soon(time.sleep, 0.3)  # runs after the call is made, before its flush
        decision = await call
        assert decision.degraded
        assert any(
            "TimeoutError: no answer from Redis within 0.2 s" in record.getMessage()
            for record in caplog.records
        )


async def test_an_acquire_and_a_charge_keep_a_token_limit_under_its_own_keys(
    server: RedisServer,
) -> None:
    # An acquire meets the counter first and builds its keys (its shape); the charge after it
    # reuses them: the tokens are where replays and every other replica look for them.
    tpm = TokenLimit("tpm", "key:3:tpm", 1000, 60.0)
    async with warmed(server) as (shared, client):
        assert (await shared.acquire([QPM], [tpm])).allowed
        await shared.charge([tpm], 7)
        assert counted(await client.get(f"{shared.prefix}v2:t:key:3:tpm:sum")) == 7
