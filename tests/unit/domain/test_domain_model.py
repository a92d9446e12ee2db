"""The domain objects' own rules: when a key has expired, and the enforcement view a gateway
receives for a key (every field it enforces, digests only, never a secret)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyplane.domain.model import (
    ROW_FIELDS,
    ApiKey,
    SecretDigest,
    enforcement_view,
    row_to_view,
    view_to_row,
)

T0 = datetime(2026, 11, 26, 14, 25, 7, 123456, tzinfo=UTC)
KEY = ApiKey(
    api_key_id="key-1",
    team_id="team-1",
    user_id="user-1",
    name="My API key",
    redacted="xai-...abcd",
    create_time=T0,
    modify_time=T0 + timedelta(seconds=1),
    modified_by="mgmt-1",
)


@given(st.timedeltas(min_value=timedelta(days=-3650), max_value=timedelta(days=3650)))
def test_a_key_has_expired_from_its_expire_time_on(offset: timedelta) -> None:
    key = replace(KEY, expire_time=T0)
    assert key.is_expired(T0 + offset) is (offset >= timedelta(0))
    assert replace(KEY, expire_time=None).is_expired(T0 + offset) is False


def test_the_view_of_a_bare_key() -> None:
    assert enforcement_view(KEY) == {
        "apiKeyId": "key-1",
        "teamId": "team-1",
        "userId": "user-1",
        "name": "My API key",
        "redactedApiKey": "xai-...abcd",
        "createTime": "2026-11-26T14:25:07.123456Z",
        "modifyTime": "2026-11-26T14:25:08.123456Z",
        "modifiedBy": "mgmt-1",
        "disabled": False,
        "expireTime": None,
        "qps": None,
        "qpm": None,
        "tpm": None,
        "acls": [],
        "secrets": [],
        "revision": 0,
        "apiKeyBlockedUntil": None,
        "teamBlockedUntil": None,
    }


def test_the_view_of_a_key_mid_rotation_with_every_field_set() -> None:
    key = replace(
        KEY,
        disabled=True,
        expire_time=T0 + timedelta(days=30),
        qps=5,
        qpm=100,
        tpm=2**40,
        acl_strings=("api-key:model:*", "api-key:endpoint:chat"),
        revision=42,
        secrets=(
            SecretDigest("new-digest"),
            SecretDigest("old-digest", expire_time=T0 + timedelta(hours=24)),
        ),
        budget_cents=500,
        budget_period="DAY",
        budget_blocked_until=T0 + timedelta(hours=2),
        team_blocked_until=T0 + timedelta(hours=3),
    )
    view = enforcement_view(key)
    assert view == {
        **enforcement_view(KEY),
        "disabled": True,
        "expireTime": "2026-12-26T14:25:07.123456Z",
        "qps": 5,
        "qpm": 100,
        "tpm": 2**40,
        "acls": ["api-key:model:*", "api-key:endpoint:chat"],
        "secrets": [
            {"digest": "new-digest", "expireTime": None},
            {"digest": "old-digest", "expireTime": "2026-11-27T14:25:07.123456Z"},
        ],
        "revision": 42,
        "apiKeyBlockedUntil": "2026-11-26T16:25:07.123456Z",
        "teamBlockedUntil": "2026-11-26T17:25:07.123456Z",
    }
    assert isinstance(view["acls"], list)


def test_a_row_is_the_view_in_row_order_with_secrets_as_pairs() -> None:
    key = replace(
        KEY,
        qps=5,
        secrets=(SecretDigest("new"), SecretDigest("old", expire_time=T0)),
    )
    view = enforcement_view(key)
    row = view_to_row(view)
    assert row[0] == "key-1"
    assert row[1] == [["new", None], ["old", "2026-11-26T14:25:07.123456Z"]]
    assert row[2:] == [view[name] for name in ROW_FIELDS[2:]]
    assert row_to_view(row) == view
    assert view_to_row({**view, "secrets": None})[1] == []


def test_a_row_of_the_wrong_length_is_refused() -> None:
    row = view_to_row(enforcement_view(KEY))
    with pytest.raises(ValueError, match="zip"):
        row_to_view(row[:-1])
