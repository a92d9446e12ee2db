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


def test_each_series_carries_its_window_and_bucket_width_in_microseconds() -> None:
    # Exact request limits (<= exact_max) have width 0; larger ones window // buckets; token
    # limits window // token_buckets. The width of a tiny window is at least 1 µs.
    j = Journal(exact_max=100, buckets=60, token_buckets=30)
    big = RequestLimit("qpm", "key:1:big", 101, 60.0)
    tiny = RequestLimit("rps", "key:1:tiny", 5000, 0.00001)  # 10 µs, 60 buckets
    tiny_tokens = TokenLimit("tpm", "key:1:tt", 10, 0.00001)
    j.admit(1.0, 1, [QPM, big, tiny])
    j.charge(1.0, 2, [TPM, tiny_tokens], 7)
    batch = j.replay(1.0, after=0, prefix="")
    assert batch.keys[::2] == [
        "r:key:1:qpm:log",
        "r:key:1:big:log",
        "r:key:1:tiny:log",
        "t:key:1:tpm:log",
        "t:key:1:tt:log",
    ]
    assert batch.args == [
        60_000_000, 0, 1, 0, 1, 1,  # qpm 100 <= 100: exact
        60_000_000, 1_000_000, 1, 0, 1, 1,  # 101 > 100: 60 buckets of 1 s
        10, 1, 1, 0, 1, 1,  # 10 µs // 60 = 0: 1 µs
        60_000_000, 2_000_000, 1, 0, 2, 7,  # 30 token buckets of 2 s
        10, 1, 1, 0, 2, 7,
    ]  # fmt: skip
    assert batch.entries == 5


def test_an_entry_leaves_the_replay_once_its_age_reaches_the_window() -> None:
    j = journal()
    j.admit(0.0, 1, [QPS, QPM])
    j.charge(0.0, 2, [TokenLimit("tpm", "t", 100, 1.0), TPM], 5)
    j.admit(0.5, 3, [QPS])
    # At 1.0 the admissions of 0.0 are exactly one qps window old: out of it, but still in the
    # qpm window; the next ones are still sent, each limit on its own.
    batch = j.replay(1.0, after=0, prefix="")
    assert batch.keys[::2] == ["r:key:1:qpm:log", "t:key:1:tpm:log", "r:key:1:qps:log"]
    assert entries(batch.args) == [
        [(1_000_000, 1, 1)],
        [(1_000_000, 2, 5)],
        [(500_000, 3, 1)],
    ]
    # Just before, the qps entry and the 1 s token charge still count.
    early = j.replay(1.0 - 2**-20, after=0, prefix="")
    assert len(entries(early.args)) == 4
    assert early.entries == 5  # qps: 2, qpm: 1, each token limit: 1


def test_the_newest_limit_of_a_counter_sets_its_series() -> None:
    j = Journal(exact_max=100, buckets=60, token_buckets=60)
    j.admit(1.0, 1, [RequestLimit("qpm", "k", 50, 60.0)])
    j.admit(2.0, 2, [RequestLimit("qpm", "k", 500, 30.0)])  # now bucketed, 30 s
    batch = j.replay(2.0, after=0, prefix="")
    assert batch.args[:3] == [30_000_000, 500_000, 2]
    assert entries(batch.args) == [[(1_000_000, 1, 1), (0, 2, 1)]]


def test_the_horizon_is_the_longest_window_seen_and_the_events_it_keeps() -> None:
    j = journal()
    assert j.horizon == 0.0
    assert len(j) == 0
    j.admit(0.0, 1, [QPS])
    assert j.horizon == 1.0
    j.admit(0.5, 2, [QPS])
    assert len(j) == 2
    j.admit(1.0, 3, [QPS])  # the first is exactly one window old: gone
    assert len(j) == 2
    j.charge(1.0, 4, [TPM], 1)
    assert j.horizon == 60.0
    j.admit(1.5, 5, [QPS])  # a shorter window does not shrink the horizon
    assert j.horizon == 60.0
    assert len(j) == 4


def test_token_replays_keep_the_charges_that_hold_the_limit_and_no_more() -> None:
    j = journal()
    # 1000 exactly is not over the limit: every charge is needed.
    for seq, amount in enumerate([600, 400], start=1):
        j.charge(float(seq), seq, [TPM], amount)
    (sent,) = entries(j.replay(3.0, after=0, prefix="").args)
    assert [seq for _, seq, _ in sent] == [1, 2]
    # One charge alone over the limit is all that is needed.
    j.charge(3.0, 3, [TPM], 1001)
    (sent,) = entries(j.replay(3.0, after=0, prefix="").args)
    assert [seq for _, seq, _ in sent] == [3]
    # Under the limit: all of them.
    small = journal()
    small.charge(1.0, 1, [TPM], 1)
    (sent,) = entries(small.replay(1.0, after=0, prefix="").args)
    assert sent == [(0, 1, 1)]


def test_a_token_series_is_cut_where_its_newest_charges_first_exceed_the_limit() -> None:
    # From the newest back: 600, then 600 + 500 > 1000: the oldest (100) is not needed.
    j = journal()
    for seq, amount in enumerate([100, 500, 600], start=1):
        j.charge(float(seq), seq, [TPM], amount)
    (sent,) = entries(j.replay(4.0, after=0, prefix="").args)
    assert [seq for _, seq, _ in sent] == [2, 3]
    # A newest charge of exactly the limit is not over it: the one before is still needed.
    k = journal()
    for seq, amount in enumerate([5, 1000], start=1):
        k.charge(float(seq), seq, [TPM], amount)
    (sent,) = entries(k.replay(3.0, after=0, prefix="").args)
    assert [seq for _, seq, _ in sent] == [1, 2]


def test_bucket_widths_are_whole_microseconds() -> None:
    # 1 s over 60 buckets is 16,666 µs, not 16,666.67: Redis places entries on whole µs.
    j = Journal(exact_max=10, buckets=60, token_buckets=60)
    j.admit(1.0, 1, [RequestLimit("rps", "r", 11, 1.0)])
    j.charge(1.0, 2, [TokenLimit("tpm", "t", 10, 1.0)], 3)
    args = j.replay(1.0, after=0, prefix="").args
    assert args == [1_000_000, 16_666, 1, 0, 1, 1, 1_000_000, 16_666, 1, 0, 2, 3]
    assert all(type(arg) is int for arg in args)
