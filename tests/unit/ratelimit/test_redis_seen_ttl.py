"""How long Redis keeps a replica's "seen" mark (#18: ``_seen_ttl_for`` and ``_seen_ttl_ms``).

The mark (the highest sequence number Redis has counted of the replica) must outlive every entry
it guards: the longest window of the call's limits and of the replica's journal (at least 1 s),
plus a second. No server is needed: the arguments are computed before anything is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from keyplane.ratelimit import RedisLimiter, RedisLimiterSettings, RequestLimit, TokenLimit
from tests.support.procs import free_port


@pytest.fixture
async def limiter() -> AsyncIterator[RedisLimiter]:
    made = RedisLimiter.from_url(
        f"redis://127.0.0.1:{free_port()}/0", RedisLimiterSettings(timeout=5.0)
    )
    yield made
    await made.aclose()


QPS = RequestLimit("qps", "key:1:qps", 5, 1.0)
HALF = RequestLimit("qphs", "key:1:qphs", 5, 0.5)
TEN = TokenLimit("t10", "key:1:t10", 100, 10.0)


async def test_the_mark_outlives_the_longest_window_by_a_second(limiter: RedisLimiter) -> None:
    assert limiter._seen_ttl_ms() == 2_000  # nothing journaled yet: at least 1 s, plus 1 s
    assert limiter._seen_ttl_for([]) == 2_000
    assert limiter._seen_ttl_for([HALF]) == 2_000  # a window under a second counts as one
    assert limiter._seen_ttl_for([QPS]) == 2_000
    assert limiter._seen_ttl_for([QPS, TEN]) == 11_000
    assert limiter._seen_ttl_for([TEN, QPS]) == 11_000


async def test_the_journal_s_longest_window_counts_too(limiter: RedisLimiter) -> None:
    limiter._journal.charge(0.0, 1, [TEN], 5)
    assert limiter._seen_ttl_ms() == 11_000
    assert limiter._seen_ttl_for([QPS]) == 11_000
    assert limiter._seen_ttl_for([RequestLimit("qpm", "key:1:qpm", 5, 60.0)]) == 61_000
