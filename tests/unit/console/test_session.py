"""Console session cookies: only what this server sealed opens, for its own kind, until expiry."""

from __future__ import annotations

import base64
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyplane.console import session as sess

SECRET = b"s" * 32


def test_a_sealed_session_opens_as_it_was() -> None:
    sealer = sess.Sealer(SECRET)
    made, cookie = sealer.new(sess.TEAM, "key-id", "team-id")
    opened = sealer.open(sess.TEAM, cookie)
    assert opened == made
    assert opened.expires > time.time() + sess.SESSION_TTL_S - 60


def test_a_team_session_is_not_an_operator_session() -> None:
    sealer = sess.Sealer(SECRET)
    _made, cookie = sealer.new(sess.TEAM, "key-id", "team-id")
    assert sealer.open(sess.OPERATOR, cookie) is None


def test_another_deployments_cookie_does_not_open() -> None:
    _made, cookie = sess.Sealer(b"x" * 32).new(sess.TEAM, "key-id", "team-id")
    assert sess.Sealer(SECRET).open(sess.TEAM, cookie) is None


def test_a_rotated_secret_still_opens_old_cookies_and_seals_new_ones() -> None:
    _made, old_cookie = sess.Sealer(SECRET).new(sess.TEAM, "key-id", "team-id")
    rotated = sess.Sealer(b"n" * 32, (SECRET,))
    assert rotated.open(sess.TEAM, old_cookie) is not None
    _made, new_cookie = rotated.new(sess.TEAM, "key-id", "team-id")
    assert sess.Sealer(SECRET).open(sess.TEAM, new_cookie) is None


def test_an_expired_session_does_not_open() -> None:
    sealer = sess.Sealer(SECRET)
    made, _cookie = sealer.new(sess.TEAM, "key-id", "team-id")
    expired = sess.Session(
        made.kind, made.credential_id, made.team_id, int(time.time()) - 1, made.csrf
    )
    assert sealer.open(sess.TEAM, sealer.seal(expired)) is None


@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_changed_byte_is_refused(position: int, flip: int) -> None:
    sealer = sess.Sealer(SECRET)
    _made, cookie = sealer.new(sess.TEAM, "key-id", "team-id")
    raw = bytearray(base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4)))
    raw[position % len(raw)] ^= flip
    forged = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    assert sealer.open(sess.TEAM, forged) is None


@given(st.text(max_size=2000))
def test_garbage_is_no_session(cookie: str) -> None:
    assert sess.Sealer(SECRET).open(sess.TEAM, cookie) is None


@pytest.mark.parametrize(("expected", "presented"), [("abc", None), ("abc", "abd"), ("abc", "")])
def test_csrf_tokens_must_match(expected: str, presented: str | None) -> None:
    assert not sess.same_token(expected, presented)
    assert sess.same_token(expected, expected)
