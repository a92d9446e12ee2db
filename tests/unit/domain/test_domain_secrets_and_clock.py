"""Secrets' shape checks and redaction, and the clock seam (written against mutants mutation testing
left alive)."""

from __future__ import annotations

import hashlib
import itertools
import secrets
import string
from datetime import UTC, datetime, timedelta

import pytest

from keyplane.domain.clock import ManualClock, SystemClock
from keyplane.domain.keysecrets import (
    SECRET_LENGTH,
    digest,
    generate_secret,
    looks_like,
    redact,
)


def test_redaction_keeps_the_prefix_and_the_last_four_characters() -> None:
    secret = "xai-" + "a" * (SECRET_LENGTH - 4) + "wxyz"
    assert redact(secret, "xai-") == "xai-...wxyz"


def test_a_secret_is_stored_as_its_sha256_hex_digest() -> None:
    assert digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert digest("xai-é") == hashlib.sha256("xai-é".encode()).hexdigest()


def test_a_secret_needs_both_the_prefix_and_the_body() -> None:
    secret = generate_secret("xai-")
    assert looks_like(secret, "xai-")
    assert not looks_like("kpgw-" + secret[len("xai-") :], "xai-")  # right body, wrong prefix
    assert not looks_like("xai-" + "!" * SECRET_LENGTH, "xai-")  # right prefix, wrong body


def test_a_manual_clock_starts_at_its_origin_and_moves_only_forward_when_told() -> None:
    clock = ManualClock()
    assert clock.now() == datetime(2026, 1, 1, tzinfo=UTC)
    assert clock.monotonic() == 1000.0
    clock.advance(5)
    clock.advance(2.5)
    assert clock.now() == datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=7.5)
    assert clock.monotonic() == 1007.5


def test_the_system_clock_is_aware_utc() -> None:
    now = SystemClock().now()
    assert now.tzinfo is UTC


def test_secret_characters_come_unbiased_from_the_random_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each byte below 248 (= 4 × 62) picks ``alphabet[byte % 62]``, in order; a byte at or above
    248 is dropped, as it would make the first eight characters likelier than the rest."""
    stream = itertools.cycle(range(256))
    drawn: list[int] = []

    def token_bytes(n: int) -> bytes:
        batch = [next(stream) for _ in range(n)]
        drawn.extend(batch)
        return bytes(batch)

    monkeypatch.setattr(secrets, "token_bytes", token_bytes)  # what keysecrets draws from
    alphabet = string.ascii_letters + string.digits
    seen: set[int] = set()
    for _ in range(8):  # across the stream's wrap, where 248…255 come by
        drawn.clear()
        secret = generate_secret("p-")
        kept = [alphabet[b % 62] for b in drawn if b < 248]
        assert secret == "p-" + "".join(kept[:SECRET_LENGTH])
        seen.update(drawn)
    assert seen == set(range(256))
