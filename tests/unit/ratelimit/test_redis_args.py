"""What one acquire or charge sends to ``batch.lua`` (``_acquire_op``, ``_charge_op``): its keys,
and one MessagePack array of its fields, read by the script as numbers. No server is needed: the
arguments are built before anything is sent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest

from keyplane.ratelimit import RedisLimiter, RedisLimiterSettings, RequestLimit, TokenLimit
from keyplane.ratelimit.redis import _array, _pack
from tests.support.procs import free_port

QPS = RequestLimit("qps", "key:1:qps", 5, 1.0)
QPM = RequestLimit("qpm", "key:1:qpm", 3_000, 60.0)  # over exact_max: bucketed
TPM = TokenLimit("tpm", "key:1:tpm", 1_000, 60.0)


@pytest.fixture
async def limiter() -> AsyncIterator[RedisLimiter]:
    made = RedisLimiter.from_url(
        f"redis://127.0.0.1:{free_port()}/0",
        RedisLimiterSettings(prefix="p:", timeout=5.0, buckets=60, token_buckets=30),
    )
    yield made
    await made.aclose()


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 300])
def test_an_array_header_and_its_items_decode_as_one_array(length: int) -> None:
    items = tuple(range(length))
    assert msgspec.msgpack.decode(_array(length) + b"".join(_pack((i,)) for i in items)) == list(
        items
    )


def test_packed_items_carry_no_header() -> None:
    assert _pack((1, "a", 2**40)) == b"\x01\xa1a\xcf" + (2**40).to_bytes(8, "big")


async def test_an_acquire_sends_each_limits_keys_and_fields(limiter: RedisLimiter) -> None:
    limiter._epoch = "e1"
    keys, op = limiter._acquire_op(7, [QPS, QPM], [TPM])
    assert keys == [
        b"p:v2:r:key:1:qps:log",
        b"p:v2:r:key:1:qps:sum",
        b"p:v2:r:key:1:qpm:log",
        b"p:v2:r:key:1:qpm:sum",
        b"p:v2:t:key:1:tpm:log",
        b"p:v2:t:key:1:tpm:sum",
    ]
    # kind, keys, epoch, seq, seen TTL (ms), request limits; per limit: limit, window, width.
    assert msgspec.msgpack.decode(op) == [
        "a", 6, "e1", 7, 61_000, 2,
        5, 1_000_000, 0,
        3_000, 60_000_000, 1_000_000,
        1_000, 60_000_000, 0,
    ]  # fmt: skip
    # Built again from the kept shapes: the same bytes.
    assert limiter._acquire_op(7, [QPS, QPM], [TPM]) == (keys, op)
    limiter._epoch = None  # none known: "-", which matches no epoch Redis holds
    assert msgspec.msgpack.decode(limiter._acquire_op(8, [QPS], [])[1])[:4] == ["a", 2, "-", 8]


async def test_a_charge_sends_each_token_limits_window_and_width(limiter: RedisLimiter) -> None:
    keys, op = limiter._charge_op(9, [TPM], 150)
    assert keys == [b"p:v2:t:key:1:tpm:log", b"p:v2:t:key:1:tpm:sum"]
    # No epoch known yet: "-", which matches none Redis holds.
    assert msgspec.msgpack.decode(op) == ["c", 2, "-", 9, 61_000, 150, 60_000_000, 2_000_000]
    # After an acquire built the token limit's shape, a charge reuses it.
    limiter._acquire_op(10, [], [TPM])
    assert limiter._charge_op(9, [TPM], 150) == (keys, op)
