"""How the Redis limiter reads the acquire script's reply (``_decision``): the admitted flag, then
per limit its count, retry and reset in microseconds — request limits first, then token limits."""

from __future__ import annotations

import pytest

from keyplane.ratelimit import Quota, RequestLimit, TokenLimit
from keyplane.ratelimit.redis import _decision

QPM = RequestLimit("qpm", "key:1:qpm", 5, 60.0)
TPM = TokenLimit("tpm", "key:1:tpm", 100, 60.0)


def test_a_refusal_by_a_request_limit_reads_every_count_in_seconds() -> None:
    decision = _decision([0, 5, 2_000_000, 3_000_000, 10, 0, 4_000_000], [QPM], [TPM])
    assert not decision.allowed
    assert decision.retry_after == 2.0
    assert decision.violated is not None
    assert (decision.violated.kind, decision.violated.name, decision.violated.actual) == (
        "requests",
        "qpm",
        5,
    )
    assert decision.requests == Quota(limit=5, remaining=0, reset_after=3.0)
    assert decision.tokens == Quota(limit=100, remaining=90, reset_after=4.0)


def test_a_token_limit_over_by_a_microsecond_still_refuses() -> None:
    decision = _decision([0, 1, 0, 1_000_000, 101, 1, 5_000_000], [QPM], [TPM])
    assert decision.violated is not None
    assert (decision.violated.kind, decision.violated.actual) == ("tokens", 101)
    assert decision.retry_after == 1e-6
    assert decision.tokens == Quota(limit=100, remaining=0, reset_after=5.0)


def test_a_reply_that_contradicts_its_counts_is_a_bug_not_a_decision() -> None:
    # Admitted, yet a token limit says wait: the script and this reading disagree.
    with pytest.raises(AssertionError, match=r"disagrees with its own counts: \[1, 1, 0, "):
        _decision([1, 1, 0, 1_000_000, 101, 3_000_000, 5_000_000], [QPM], [TPM])


def test_each_token_limit_reads_its_own_triple() -> None:
    team = TokenLimit("tpm", "team:1:model:m:tpm", 50, 60.0)
    decision = _decision(
        [1, 1, 0, 1_000_000, 10, 0, 2_000_000, 40, 0, 3_000_000], [QPM], [TPM, team]
    )
    assert decision.allowed
    assert decision.tokens == Quota(limit=50, remaining=10, reset_after=3.0)  # the tightest
