"""The journal a Redis limiter replays after an outage, and the window-scaling wrapper."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from keyplane.ratelimit import MemoryLimiter, RequestLimit, ScaledWindows, TokenLimit
from keyplane.ratelimit.journal import Journal


def journal() -> Journal:
    return Journal(exact_max=1000, buckets=60, token_buckets=60)


def entries(args: Sequence[int]) -> list[list[tuple[int, int, int]]]:
    """Replay arguments back into [(age, seq, units)] per counter, in the keys' order."""
    out: list[list[tuple[int, int, int]]] = []
    i = 0
    while i < len(args):
        count = args[i + 2]
        i += 3
        triples = [
            (args[i + 3 * j], args[i + 3 * j + 1], args[i + 3 * j + 2]) for j in range(count)
        ]
        out.append(triples)
        i += 3 * count
    return out


QPS = RequestLimit("qps", "key:1:qps", 5, 1.0)
QPM = RequestLimit("qpm", "key:1:qpm", 100, 60.0)
TPM = TokenLimit("tpm", "key:1:tpm", 1000, 60.0)


def test_replay_sends_ages_of_the_entries_after_a_sequence_number_still_in_their_window() -> None:
    j = journal()
    j.admit(10.0, 1, [QPS, QPM])
    j.admit(10.5, 2, [QPS, QPM])
    j.charge(10.6, 3, [TPM], 250)
    j.admit(11.2, 4, [QPS, QPM])
    batch = j.replay(11.4, after=1, prefix="p:")
    assert batch.keys == [
        "p:r:key:1:qps:log",
        "p:r:key:1:qps:sum",
        "p:r:key:1:qpm:log",
        "p:r:key:1:qpm:sum",
        "p:t:key:1:tpm:log",
        "p:t:key:1:tpm:sum",
    ]
    sent = entries(batch.args)
    # qps: seq 1 is known to Redis, seq 2 is 0.9 s old (in the window), seq 4 0.2 s.
    assert sent[0] == [(900_000, 2, 1), (200_000, 4, 1)]
    assert sent[1] == [(900_000, 2, 1), (200_000, 4, 1)]
    assert sent[2] == [(800_000, 3, 250)]
    assert batch.entries == 5


def test_entries_older_than_the_longest_window_are_dropped() -> None:
    j = journal()
    j.admit(0.0, 1, [QPM])
    j.admit(30.0, 2, [QPS])
    j.admit(61.0, 3, [QPS])
    assert len(j) == 2
    assert j.horizon == 60.0


@given(st.integers(min_value=1, max_value=30), st.integers(min_value=0, max_value=80))
def test_a_replay_sends_no_more_request_entries_than_the_limit(limit: int, admitted: int) -> None:
    # The newest `limit` entries hold the counter at its limit for as long as any older one
    # would count: sending the older ones could not change a decision.
    j = journal()
    lim = RequestLimit("qpm", "k", limit, 60.0)
    for seq in range(1, admitted + 1):
        j.admit(seq * 0.1, seq, [lim])
    sent = entries(j.replay(admitted * 0.1, after=0, prefix="").args)
    assert [seq for series in sent for _, seq, _ in series] == list(
        range(max(1, admitted - limit + 1), admitted + 1)
    )


def test_a_replay_sends_the_newest_charges_that_exceed_a_token_limit() -> None:
    j = journal()
    for seq, amount in enumerate([400, 300, 500, 600], start=1):
        j.charge(float(seq), seq, [TPM], amount)
    (sent,) = entries(j.replay(5.0, after=0, prefix="").args)
    assert [seq for _, seq, _ in sent] == [3, 4]  # 500 + 600 > 1000 already


async def test_scaled_windows_shorten_every_window() -> None:
    inner = MemoryLimiter()
    limiter = ScaledWindows(inner, 0.05)
    minute = RequestLimit("qpm", "k", 2, 60.0)
    assert (await limiter.acquire([minute])).allowed
    assert (await limiter.acquire([minute])).allowed
    third = await limiter.acquire([minute])
    assert not third.allowed
    assert 0 < third.retry_after <= 3.0  # a "minute" of 3 s
    await limiter.charge([TokenLimit("tpm", "t", 10, 60.0)], 11)
    assert not (await limiter.acquire([], [TokenLimit("tpm", "t", 10, 60.0)])).allowed
    await limiter.aclose()
