"""Page tokens: they round-trip, they are bound to their list, and any altered byte is refused."""

from __future__ import annotations

import base64
import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from keyplane.domain.errors import InvalidArgument
from keyplane.domain.pagination import decode_token, encode_token

ALPHABET = string.ascii_letters + string.digits + "-_"
secrets = st.binary(min_size=1, max_size=64)
scopes = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)
# What the services page by: (create time in µs, id), and other JSON they might put there.
positions = st.tuples(st.integers(-(2**63), 2**63 - 1), st.uuids().map(str)).map(list) | st.lists(
    st.integers() | st.text(max_size=12) | st.booleans() | st.none(), max_size=4
)


def decode(secret: bytes, scope: str, token: str) -> list[object]:
    return decode_token(secret, scope, token, field="paginationToken")


@given(secrets, scopes, positions)
def test_a_token_round_trips(secret: bytes, scope: str, position: list[object]) -> None:
    token = encode_token(secret, scope, position)

    assert set(token) <= set(ALPHABET), "opaque and URL-safe"
    if len(token) <= 512:
        assert decode(secret, scope, token) == position
    else:  # longer than any position the services write
        with pytest.raises(InvalidArgument):
            decode(secret, scope, token)


@given(secrets, scopes, positions, st.data())
def test_any_single_character_changed_is_refused(
    secret: bytes, scope: str, position: list[object], data: st.DataObject
) -> None:
    token = encode_token(secret, scope, position)
    i = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from(ALPHABET + "=.+/ %\n\u00e9"))
    assume(replacement != token[i])

    with pytest.raises(InvalidArgument):
        decode(secret, scope, token[:i] + replacement + token[i + 1 :])


@given(secrets, scopes, positions, st.data())
def test_a_character_added_or_removed_is_refused(
    secret: bytes, scope: str, position: list[object], data: st.DataObject
) -> None:
    token = encode_token(secret, scope, position)
    i = data.draw(st.integers(0, len(token)))
    extra = data.draw(st.sampled_from(ALPHABET + "="))

    with pytest.raises(InvalidArgument):
        decode(secret, scope, token[:i] + extra + token[i:])
    if i < len(token):
        with pytest.raises(InvalidArgument):
            decode(secret, scope, token[:i] + token[i + 1 :])


@given(secrets, scopes, positions, st.data())
def test_any_bit_of_the_decoded_bytes_flipped_is_refused(
    secret: bytes, scope: str, position: list[object], data: st.DataObject
) -> None:
    token = encode_token(secret, scope, position)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= 1 << data.draw(st.integers(0, 7))
    forged = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")

    with pytest.raises(InvalidArgument):
        decode(secret, scope, forged)


@given(secrets, secrets, scopes, scopes, positions)
def test_a_token_is_bound_to_its_secret_and_scope(
    secret: bytes, other_secret: bytes, scope: str, other_scope: str, position: list[object]
) -> None:
    token = encode_token(secret, scope, position)
    if other_secret != secret:
        with pytest.raises(InvalidArgument):
            decode(other_secret, scope, token)
    if other_scope != scope:
        with pytest.raises(InvalidArgument):
            decode(secret, other_scope, token)


@given(secrets, st.text(max_size=80) | st.text(ALPHABET, max_size=80))
def test_garbage_is_invalid_argument_and_nothing_else(secret: bytes, token: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        decode(secret, "scope", token)
    assert refused.value.field == "paginationToken"


@pytest.mark.parametrize("padding", range(4))
def test_every_single_character_change_of_a_token_is_refused(padding: int) -> None:
    """Exhaustively, on tokens of each length mod 4: the last character of an unpadded base64
    string carries unused bits, and a decoder that ignores them would accept a changed token."""
    secret, scope = b"k" * 32, '["api-keys","team"]'
    token = encode_token(secret, scope, [1_767_225_600_000_000, "x" * padding])
    changed = 0
    for i in range(len(token)):
        for replacement in ALPHABET + "=.+/ ":
            if replacement == token[i]:
                continue
            changed += 1
            with pytest.raises(InvalidArgument):
                decode(secret, scope, token[:i] + replacement + token[i + 1 :])
    assert changed >= len(token) * len(ALPHABET) - len(token)


REFUSAL = "paginationToken: is not a valid page token from this list"


def test_every_refusal_says_the_same_thing_and_names_the_field() -> None:
    secret = b"k" * 32
    token = encode_token(secret, "scope", [1, "x"])
    for forged in ("", "!", token + "A", token[:-1], "A" * 513):
        with pytest.raises(InvalidArgument) as refused:
            decode(secret, "scope", forged)
        assert str(refused.value) == REFUSAL
        assert refused.value.message == REFUSAL


@pytest.mark.parametrize("padding", range(3))
def test_a_token_of_exactly_the_longest_length_is_read(padding: int) -> None:
    """512 characters are allowed, one more are not; near that edge, for each base64 remainder."""
    secret, scope = b"k" * 32, "scope"
    # 16 MAC bytes + the payload ``["x…x"]`` (length + 4): 384 bytes make 512 characters.
    longest = encode_token(secret, scope, ["x" * (384 - 16 - 4 - padding)])
    assert len(longest) == 512 - padding
    assert decode(secret, scope, longest) == ["x" * (384 - 16 - 4 - padding)]
    over = encode_token(secret, scope, ["x" * (385 - 16 - 4)])
    assert len(over) == 514
    with pytest.raises(InvalidArgument):
        decode(secret, scope, over)
