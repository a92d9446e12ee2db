"""An API key's answer built without pydantic (``render.api_key_json``, what CreateApiKey and
RotateApiKey answer) is byte for byte what the pydantic model serializes, whatever the key holds:
any text (control characters, quotes, non-ASCII, lone surrogates), any limits, times, ACLs and
budget, and a secret or none."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic_core import PydanticSerializationError

from keyplane.control import render
from keyplane.domain.model import ApiKey

_text = st.text(st.characters(codec=None), max_size=12)
_times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
)
_limits = st.none() | st.integers(min_value=0, max_value=2**63 - 1)

_keys = st.builds(
    ApiKey,
    api_key_id=_text,
    team_id=_text,
    user_id=_text,
    name=_text,
    redacted=_text,
    create_time=_times,
    modify_time=_times,
    modified_by=_text,
    disabled=st.booleans(),
    expire_time=st.none() | _times,
    qps=_limits,
    qpm=_limits,
    tpm=_limits,
    acl_strings=st.lists(_text, max_size=4).map(tuple),
    budget_cents=_limits,
    budget_period=st.none() | st.sampled_from(["DAY", "WEEK", "MONTH"]) | _text,
)


def _pydantic(key: ApiKey, secret: str | None) -> bytes | type[Exception]:
    try:
        return render.dump(render.api_key(key, secret))
    except Exception as error:  # a lone surrogate: pydantic refuses to serialize it
        return type(error)


def _ours(key: ApiKey, secret: str | None) -> bytes | type[Exception]:
    try:
        return render.api_key_json(key, secret)
    except Exception as error:
        return type(error)


@given(_keys, st.none() | _text)
def test_the_answer_without_pydantic_is_pydantics_bytes(key: ApiKey, secret: str | None) -> None:
    assert _ours(key, secret) == _pydantic(key, secret)


def test_a_lone_surrogate_fails_as_pydantic_fails() -> None:
    key = ApiKey("k", "t", "u", "a\ud800", "r", datetime.now(UTC), datetime.now(UTC), "u")
    with pytest.raises(PydanticSerializationError, match="surrogates not allowed"):
        render.api_key_json(key)
    with pytest.raises(PydanticSerializationError, match="surrogates not allowed"):
        render.dump(render.api_key(key))
