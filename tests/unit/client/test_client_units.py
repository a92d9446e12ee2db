"""The SDK's pure parts: the field-mask helper, the retry policy, the error map."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx2
import msgspec
from hypothesis import given
from hypothesis import strategies as st

from keyplane.client import ApiKey, ApiKeyUpdate, Budget, Propagation, Retry
from keyplane.client._base import RETRY_STATUSES, Call, next_wait
from keyplane.client._rpc import Empty
from keyplane.client.errors import _BY_STATUS, APIError, RateLimited, error_for

CAMEL = {
    "name": "name",
    "acl_strings": "aclStrings",
    "qps": "qps",
    "qpm": "qpm",
    "tpm": "tpm",
    "disabled": "disabled",
    "expire_time": "expireTime",
    "budget": "budget",
}
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
values = {
    "name": st.text(min_size=1, max_size=20),
    "acl_strings": st.lists(st.sampled_from(["api-key:endpoint:chat", "api-key:model:*"])),
    "qps": st.none() | st.integers(0, 2**31 - 1),
    "qpm": st.none() | st.integers(0, 2**31 - 1),
    "tpm": st.none() | st.integers(0, 2**63 - 1),
    "disabled": st.booleans(),
    "expire_time": st.none() | moments,
    "budget": st.none() | st.builds(Budget, cents=st.integers(0, 10**9)),
}


@given(st.fixed_dictionaries({}, optional=values))
def test_the_mask_is_the_fields_set_and_the_body_their_values(fields: dict[str, object]) -> None:
    update = ApiKeyUpdate(**fields)  # type: ignore[arg-type]
    mask = update.field_mask()
    # Every field set, in the struct's order (CAMEL's), and nothing else.
    assert (mask.split(",") if mask else []) == [CAMEL[f] for f in CAMEL if f in fields]
    body = update.api_key()
    assert set(body) == {CAMEL[f] for f, v in fields.items() if v is not None}
    if fields.get("tpm") is not None:
        assert body["tpm"] == str(fields["tpm"])
    if isinstance(fields.get("expire_time"), datetime):
        assert body["expireTime"].endswith("Z")
        assert datetime.fromisoformat(body["expireTime"]) == fields["expire_time"]
    msgspec.json.encode(body)  # the body is plain JSON


def test_wire_answers_decode_liberally() -> None:
    key = msgspec.json.decode(
        b'{"apiKeyId":"k","tpm":"123","qps":5,"createTime":"2026-11-26T14:25:07.123456Z",'
        b'"budget":{"cents":"500","period":"DAY"},"somethingNew":1}',
        type=ApiKey,
        strict=False,
    )
    assert (key.tpm, key.qps, key.budget) == (123, 5, Budget(cents=500, period="DAY"))
    assert key.create_time == datetime(2026, 11, 26, 14, 25, 7, 123456, tzinfo=UTC)
    assert key.acl_strings == []
    assert Propagation(ic_propagation={}).done is False
    assert Propagation(ic_propagation={"a": True, "b": False}).pending() == ["b"]


@given(
    attempts=st.integers(1, 8),
    backoff=st.floats(0.001, 2),
    cap=st.floats(0.001, 10),
    retry=st.integers(1, 10),
    retry_after=st.none() | st.floats(0, 120),
)
def test_retry_delays_stay_within_their_bounds(
    attempts: int, backoff: float, cap: float, retry: int, retry_after: float | None
) -> None:
    policy = Retry(attempts=attempts, backoff=backoff, max_backoff=cap, max_retry_after=60)
    delay = policy.delay(retry, retry_after)
    if retry >= attempts or (retry_after is not None and retry_after > 60):
        assert delay is None
    elif retry_after is not None:
        assert delay == retry_after
    else:
        assert delay is not None
        assert 0 <= delay <= min(cap, backoff * 2**retry)


@given(status=st.integers(200, 599), idempotent=st.booleans())
def test_only_idempotent_calls_on_later_statuses_are_retried(status: int, idempotent: bool) -> None:
    call = Call("GET", "/x", Empty, idempotent=idempotent)
    response = httpx2.Response(status, headers={"retry-after": "0"})
    wait = next_wait(Retry(), call, 1, response)
    assert (wait is not None) == (idempotent and status in RETRY_STATUSES)
    assert (next_wait(Retry(), call, 1, None) is not None) == idempotent


def test_each_status_of_the_contract_has_its_exception() -> None:
    for status, cls in _BY_STATUS.items():
        error = error_for(status, None, "m", 1.0)
        assert type(error) is cls
        assert isinstance(error, APIError)
        assert error.status == status
    limited = error_for(429, "resource-exhausted:qpm", "m", 3.0)
    assert isinstance(limited, RateLimited)
    assert (limited.retry_after, limited.detail) == (3.0, "qpm")
