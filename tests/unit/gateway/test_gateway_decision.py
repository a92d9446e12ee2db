"""The gateway's decision path in process, with no server and no upstream: who the caller is
(credentials), whether the key may be used now (state), and what it may do (endpoint ACL → model
→ model ACL → limits). Refusals are checked word for word: they are what a client reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyplane.catalog import Catalog
from keyplane.domain import keysecrets
from keyplane.domain.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from keyplane.gateway import Gateway, GatewayConfig
from keyplane.gateway.admission import Admission, Limits, limits_for, quota_headers
from keyplane.gateway.replica import Change, KeyRecord, Replica
from keyplane.ratelimit import Decision, Quota, RequestLimit, TokenLimit, Violation
from keyplane.settings import ModelSettings, Settings
from keyplane.usage.meter import Tally

US, EU = "us-east-1", "eu-west-1"
NOW = 1_800_000_000.0
SECRET = keysecrets.generate_secret("xai-")
OLD_SECRET = keysecrets.generate_secret("xai-")


def view(**fields: Any) -> dict[str, Any]:
    return {
        "apiKeyId": "k1",
        "teamId": "t1",
        "userId": "u1",
        "name": "key one",
        "redactedApiKey": "xai-...abcd",
        "acls": ["api-key:endpoint:*", "api-key:model:*"],
        "secrets": [{"digest": keysecrets.digest(SECRET), "expireTime": None}],
        "revision": 1,
        **fields,
    }


def record(**fields: Any) -> KeyRecord:
    return KeyRecord.from_view(view(**fields))


def ts(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


CATALOG = Catalog(
    Settings(
        models=[
            ModelSettings(name="big", aliases=["big-latest"], rps=2, rpm=30, tpm=1000),
            ModelSettings(name="small", aliases=["small-alias"]),
            ModelSettings(name="eu-only", clusters=[EU]),
        ],
    )
)


class ScriptedLimiter:
    """A ``Limiter`` answering a scripted decision, recording what it was asked."""

    def __init__(self, *decisions: Decision) -> None:
        self.decisions = list(decisions)
        self.asked: list[tuple[tuple[RequestLimit, ...], tuple[TokenLimit, ...]]] = []

    async def acquire(
        self, requests: Sequence[RequestLimit], tokens: Sequence[TokenLimit] = ()
    ) -> Decision:
        self.asked.append((tuple(requests), tuple(tokens)))
        return self.decisions.pop(0)

    async def charge(self, tokens: Sequence[TokenLimit], amount: int) -> None:
        raise AssertionError("admission never charges")

    async def aclose(self) -> None:
        pass


def admitted(requests: Quota | None = None, tokens: Quota | None = None) -> Decision:
    return Decision(True, 0.0, None, requests, tokens)


def refused(counter: str, name: str = "qps", *, actual: int = 5, limit: int = 5) -> Decision:
    violation = Violation("requests", name, counter, actual, limit, 0.25)
    return Decision(False, 0.25, violation, Quota(limit, 0, 0.25), None)


# -- limits ---------------------------------------------------------------------------------------


def test_a_key_s_limits_and_its_team_s_limits_on_the_model() -> None:
    key = record(qps=5, qpm=100, tpm=2000)
    big = CATALOG.resolve("big", US)
    assert limits_for(key, big) == Limits(
        requests=(
            RequestLimit("qps", "key:k1:qps", 5, 1.0),
            RequestLimit("qpm", "key:k1:qpm", 100, 60.0),
            RequestLimit("rps", "team:t1:model:big:rps", 2, 1.0),
            RequestLimit("rpm", "team:t1:model:big:rpm", 30, 60.0),
        ),
        tokens=(
            TokenLimit("tpm", "key:k1:tpm", 2000, 60.0),
            TokenLimit("tpm", "team:t1:model:big:tpm", 1000, 60.0),
        ),
    )


@pytest.mark.parametrize("unlimited", [None, 0])
def test_no_limit_set_is_no_limit_checked(unlimited: int | None) -> None:
    key = record(qps=unlimited, qpm=unlimited, tpm=unlimited)
    assert limits_for(key, CATALOG.resolve("small", US)) == Limits((), ())
    assert limits_for(key, None) == Limits((), ())
    assert limits_for(record(qpm=7), None) == Limits(
        (RequestLimit("qpm", "key:k1:qpm", 7, 60.0),), ()
    )
    assert limits_for(record(tpm=9), None) == Limits((), (TokenLimit("tpm", "key:k1:tpm", 9),))


def test_quota_headers_say_limit_remaining_and_reset_of_each_kind() -> None:
    decision = admitted(Quota(10, 3, 0.5), Quota(1000, -20, 59.9996))
    assert quota_headers(decision) == [
        (b"x-ratelimit-limit-requests", b"10"),
        (b"x-ratelimit-remaining-requests", b"3"),
        (b"x-ratelimit-reset-requests", b"0.500s"),
        (b"x-ratelimit-limit-tokens", b"1000"),
        (b"x-ratelimit-remaining-tokens", b"0"),  # over the limit reads as none left
        (b"x-ratelimit-reset-tokens", b"60.000s"),
    ]
    assert quota_headers(admitted(tokens=Quota(5, 5, 0.0))) == [
        (b"x-ratelimit-limit-tokens", b"5"),
        (b"x-ratelimit-remaining-tokens", b"5"),
        (b"x-ratelimit-reset-tokens", b"0.000s"),
    ]
    assert quota_headers(admitted()) == []


async def test_admission_asks_the_limiter_for_every_limit_at_once() -> None:
    limiter = ScriptedLimiter(admitted(Quota(5, 4, 1.0)))
    admission = Admission(CATALOG, limiter, US)
    key = record(qps=5)
    big = CATALOG.resolve("big", US)
    limits, decision = await admission.admit(key, big)
    assert limits == limits_for(key, big)
    assert limiter.asked == [(limits.requests, limits.tokens)]
    assert decision == admitted(Quota(5, 4, 1.0))


async def test_a_key_without_limits_is_admitted_without_asking() -> None:
    limiter = ScriptedLimiter()
    limits, decision = await Admission(CATALOG, limiter, US).admit(record(), None)
    assert (limits, limiter.asked) == (Limits((), ()), [])
    assert decision.allowed
    assert (decision.retry_after, decision.violated, decision.requests, decision.tokens) == (
        0.0,
        None,
        None,
        None,
    )


async def test_a_new_revision_of_a_key_brings_its_new_limits() -> None:
    limiter = ScriptedLimiter(admitted(), admitted(), admitted())
    admission = Admission(CATALOG, limiter, US)
    await admission.admit(record(qps=1, revision=1), None)
    await admission.admit(record(qps=9, revision=2), None)
    await admission.admit(record(qps=9, revision=2), CATALOG.resolve("big", US))
    assert [requests[0].limit for requests, _ in limiter.asked] == [1, 9, 9]
    assert len(limiter.asked[2][0]) == 3  # the model's team limits join in


async def test_a_key_over_its_limit_is_refused_with_its_quota() -> None:
    limiter = ScriptedLimiter(refused("key:k1:qps"))
    admission = Admission(CATALOG, limiter, US)
    with pytest.raises(RateLimited) as caught:
        await admission.admit(record(qps=5), CATALOG.resolve("big", US))
    error = caught.value
    assert error.message == "Rate limit exceeded for API key xai-...abcd: qps limit exceeded: 5/5."
    assert error.retry_after == 0.25
    assert error.headers == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "0.250s",
    }


async def test_a_team_over_its_model_limit_is_told_so() -> None:
    limiter = ScriptedLimiter(refused("team:t1:model:big:rps", "rps", actual=2, limit=2))
    with pytest.raises(RateLimited) as caught:
        await Admission(CATALOG, limiter, US).admit(record(), CATALOG.resolve("big-latest", US))
    assert caught.value.message == (
        "Too many requests for team t1 and model big: rps limit exceeded: 2/2."
    )


async def test_a_refusal_with_no_limit_violated_says_the_limiter_is_unavailable() -> None:
    limiter = ScriptedLimiter(Decision(False, 1.0, None, None, None, degraded=True))
    with pytest.raises(RateLimited) as caught:
        await Admission(CATALOG, limiter, US).admit(record(qps=5), CATALOG.resolve("big", US))
    assert caught.value.message == (
        "Rate limit exceeded for API key xai-...abcd: rate limiter unavailable."
    )
    assert (caught.value.retry_after, caught.value.headers) == (1.0, {})


# -- endpoint and model ---------------------------------------------------------------------------


def test_an_endpoint_outside_the_key_s_acls_is_denied() -> None:
    admission = Admission(CATALOG, ScriptedLimiter(), US)
    key = record(acls=["api-key:endpoint:chat", "api-key:model:*"])
    admission.check_endpoint(key, "chat")
    with pytest.raises(PermissionDenied) as caught:
        admission.check_endpoint(key, "embed")
    assert caught.value.message == (
        "Access to the embed endpoint is denied. The API key xai-...abcd lacks the ACL "
        "api-key:endpoint:embed."
    )


def test_a_model_resolves_by_name_or_alias_where_it_is_served() -> None:
    admission = Admission(CATALOG, ScriptedLimiter(), US)
    key = record(acls=["api-key:endpoint:*", "api-key:model:big"])
    tally = Tally("chat")
    assert admission.resolve(key, "big-latest", tally).name == "big"
    assert tally.model == "big"  # metered under its canonical name
    assert admission.resolve(key, "big", None).name == "big"


def test_a_model_not_served_in_this_cluster_does_not_exist_here() -> None:
    tally = Tally("chat")
    with pytest.raises(NotFound) as caught:
        Admission(CATALOG, ScriptedLimiter(), US).resolve(record(), "eu-only", tally)
    assert caught.value.message == (
        "The model eu-only does not exist or your team does not have access to it."
    )
    assert tally.model == "eu-only"
    assert Admission(CATALOG, ScriptedLimiter(), EU).resolve(record(), "eu-only", None).name == (
        "eu-only"
    )
    unknown = Tally("chat")
    with pytest.raises(NotFound):
        Admission(CATALOG, ScriptedLimiter(), US).resolve(record(), "m" * 200, unknown)
    assert unknown.model == "m" * 128  # metered, cut to a bounded name


def test_a_model_outside_the_key_s_acls_is_denied_with_the_grant_it_needs() -> None:
    key = record(acls=["api-key:endpoint:*", "api-key:model:small-alias"])
    admission = Admission(CATALOG, ScriptedLimiter(), US)
    assert admission.resolve(key, "small-alias", None).name == "small"
    with pytest.raises(PermissionDenied) as caught:
        admission.resolve(key, "big-latest", Tally("chat"))
    assert caught.value.message == (
        "The API key xai-...abcd cannot be used to make requests against big-latest. "
        "Grant it api-key:model:big to allow this."
    )


def test_the_models_a_key_sees_are_those_of_its_cluster_it_may_use() -> None:
    everything = record()
    assert Admission(CATALOG, ScriptedLimiter(), US).visible_models(everything) == [
        "big",
        "big-latest",
        "small",
        "small-alias",
    ]
    assert Admission(CATALOG, ScriptedLimiter(), EU).visible_models(everything)[-1] == "eu-only"
    alias_only = record(acls=["api-key:model:small-alias"])
    assert Admission(CATALOG, ScriptedLimiter(), US).visible_models(alias_only) == ["small-alias"]
    canonical = record(acls=["api-key:model:big"])  # a grant of the model covers its aliases
    assert Admission(CATALOG, ScriptedLimiter(), US).visible_models(canonical) == [
        "big",
        "big-latest",
    ]


# -- credentials and state ------------------------------------------------------------------------


def gateway(*views: Mapping[str, Any], now: float = NOW) -> Gateway:
    replica = Replica()
    replica.apply([Change(i + 1, "upsert", v) for i, v in enumerate(views or (view(),))])
    return Gateway(GatewayConfig(cluster=US), replica, clock=lambda: now)


def scope(authorization: str | None) -> dict[str, Any]:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    return {"type": "http", "method": "GET", "path": "/v1/api-key", "headers": headers}


INCORRECT = (
    "Incorrect API key provided{}. You can obtain an API key from your team's Management API or "
    "console."
)


@pytest.mark.parametrize("authorization", [f"Bearer {SECRET}", f"  bearer   {SECRET} "])
def test_a_known_secret_authenticates_its_key(authorization: str) -> None:
    assert gateway().authenticate(scope(authorization)).api_key_id == "k1"


@pytest.mark.parametrize("authorization", [None, ""])
def test_no_credentials_is_401(authorization: str | None) -> None:
    with pytest.raises(Unauthenticated) as caught:
        gateway().authenticate(scope(authorization))
    assert caught.value.code == "unauthenticated:no-credentials"


@pytest.mark.parametrize(
    "authorization",
    [f"Basic {SECRET}", SECRET, "Bearer", "Bearer xai-short", f"Bearer kpgw-{SECRET[4:]}"],
)
def test_a_malformed_credential_is_refused_without_echoing_it(authorization: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        gateway().authenticate(scope(authorization))
    assert caught.value.message == INCORRECT.format("")


def test_an_unknown_secret_is_refused_and_shown_redacted() -> None:
    stranger = keysecrets.generate_secret("xai-")
    with pytest.raises(InvalidArgument) as caught:
        gateway().authenticate(scope(f"Bearer {stranger}"))
    assert caught.value.message == INCORRECT.format(f": xai-...{stranger[-4:]}")


def test_a_rotated_out_secret_works_until_its_grace_ends() -> None:
    rotated = view(
        secrets=[
            {"digest": keysecrets.digest(SECRET), "expireTime": None},
            {"digest": keysecrets.digest(OLD_SECRET), "expireTime": ts(NOW + 60)},
        ]
    )
    assert gateway(rotated, now=NOW + 59).authenticate(scope(f"Bearer {OLD_SECRET}"))
    for now in (NOW + 60, NOW + 61):
        with pytest.raises(InvalidArgument):
            gateway(rotated, now=now).authenticate(scope(f"Bearer {OLD_SECRET}"))
        assert gateway(rotated, now=now).authenticate(scope(f"Bearer {SECRET}"))


def test_a_rotated_out_secret_s_grace_ends_for_a_cached_key_too() -> None:
    rotated = view(
        secrets=[
            {"digest": keysecrets.digest(SECRET), "expireTime": None},
            {"digest": keysecrets.digest(OLD_SECRET), "expireTime": ts(NOW + 60)},
        ]
    )
    replica = Replica()
    replica.apply([Change(1, "upsert", rotated)])
    now = [NOW + 59]
    gw = Gateway(GatewayConfig(cluster=US), replica, clock=lambda: now[0])
    for _ in range(2):  # loaded by the general path, then a hit on the fast path
        assert gw.authenticate(scope(f"Bearer {OLD_SECRET}")).api_key_id == "k1"
    now[0] = NOW + 60
    with pytest.raises(InvalidArgument):
        gw.authenticate(scope(f"Bearer {OLD_SECRET}"))
    assert gw.authenticate(scope(f"Bearer {SECRET}")).api_key_id == "k1"


def _outcome(authenticate: Any, authorization: bytes) -> str:
    try:
        return str(authenticate(scope_of(authorization)).api_key_id)
    except (InvalidArgument, Unauthenticated) as error:
        return f"{error.code}: {error.message}"


def scope_of(authorization: bytes) -> dict[str, Any]:
    return {"type": "http", "headers": [(b"authorization", authorization)]}


_KEY_BYTES = st.sampled_from([SECRET, OLD_SECRET, "xai-" + "a" * 80]).map(str.encode)


@given(
    st.one_of(
        _KEY_BYTES.map(lambda key: b"Bearer " + key),
        st.tuples(
            st.sampled_from([b"Bearer ", b"bearer ", b" Bearer  ", b"Bearer\t", b"Basic ", b""]),
            _KEY_BYTES,
            st.integers(0, 90),
            st.binary(max_size=2),
        ).map(lambda t: t[0] + t[1][: t[2]] + t[3] + t[1][t[2] :]),
        st.binary(max_size=100),
    )
)
def test_the_fast_path_of_authenticate_decides_as_the_general_one(authorization: bytes) -> None:
    """``authenticate`` reads "Bearer <key>" from the bytes and looks among the hot keys first;
    whatever it is given, it answers what the general path (decode, strip, partition, shape
    check, the store) answers, with the key cached (the fast path's hit) or not."""
    gw = gateway(view(secrets=[{"digest": keysecrets.digest(SECRET), "expireTime": None}]))
    cold = _outcome(gw.authenticate, authorization)  # nothing cached yet: the general path
    assert gw.replica.lookup(keysecrets.digest_raw(SECRET.encode()), NOW) is not None
    assert (
        cold
        == _outcome(gw.authenticate, authorization)
        == _outcome(gw._authenticate, authorization)
    )


def state_refusal(key: KeyRecord, now: float = NOW) -> str | None:
    try:
        gateway(now=now).check_state(key)
    except PermissionDenied as error:
        return error.message
    return None


def test_a_usable_key_passes_the_state_check() -> None:
    assert state_refusal(record()) is None
    assert state_refusal(record(expireTime=ts(NOW + 1))) is None
    assert state_refusal(record(apiKeyBlockedUntil=ts(NOW), teamBlockedUntil=ts(NOW))) is None


def test_a_disabled_key_is_refused_first() -> None:
    key = record(disabled=True, expireTime=ts(NOW - 1), teamBlockedUntil=ts(NOW + 1))
    assert state_refusal(key) == "The API key xai-...abcd is disabled."


def test_an_expired_key_is_refused_from_its_expire_time_on() -> None:
    key = record(expireTime=ts(NOW), teamBlockedUntil=ts(NOW + 1))
    assert state_refusal(key) == "The API key xai-...abcd has expired."
    assert state_refusal(key, NOW - 0.5) is not None  # the team block, not expiry
    assert state_refusal(key, NOW - 0.5) != "The API key xai-...abcd has expired."


def test_a_team_out_of_credit_is_refused_before_a_key_over_budget() -> None:
    key = record(teamBlockedUntil=ts(NOW + 1), apiKeyBlockedUntil=ts(NOW + 1))
    assert state_refusal(key) == (
        "Your team t1 has either used all available credits or reached its monthly spending "
        "limit. To continue making API requests, please purchase more credits or raise your "
        "spending limit."
    )
    assert state_refusal(key, NOW + 1) is None  # both blocks end at that instant


def test_a_key_over_its_budget_is_refused_until_the_period_ends() -> None:
    key = record(apiKeyBlockedUntil=ts(NOW + 1))
    assert state_refusal(key) == (
        "The API key xai-...abcd has spent its budget for this period. It works again when the "
        "period ends or its budget is raised."
    )
    assert state_refusal(key, NOW + 1) is None


def test_each_time_bound_alone_refuses_the_key() -> None:
    # check_state skips the clock for a key with none of them (#11): each alone must still count.
    assert state_refusal(record(expireTime=ts(NOW))) == "The API key xai-...abcd has expired."
    assert state_refusal(record(teamBlockedUntil=ts(NOW + 1))) is not None
    assert state_refusal(record(apiKeyBlockedUntil=ts(NOW + 1))) is not None


# -- the record a view becomes --------------------------------------------------------------------


def test_a_record_holds_what_get_v1_api_key_shows() -> None:
    key = record(
        createTime="2026-11-26T14:25:07.000000Z",
        modifyTime="2026-11-27T14:25:07.000000Z",
        modifiedBy="mgmt-1",
        qps=1,
        qpm=2,
        tpm=3,
        revision=7,
    )
    assert (key.user_id, key.name, key.redacted) == ("u1", "key one", "xai-...abcd")
    assert (key.create_time, key.modify_time, key.modified_by) == (
        "2026-11-26T14:25:07.000000Z",
        "2026-11-27T14:25:07.000000Z",
        "mgmt-1",
    )
    assert key.acl_strings == ("api-key:endpoint:*", "api-key:model:*")
    assert (key.qps, key.qpm, key.tpm, key.revision) == (1, 2, 3, 7)


def test_a_view_with_only_its_ids_reads_as_empty_fields() -> None:
    key = KeyRecord.from_view({"apiKeyId": "k1", "teamId": "t1"})
    assert (key.user_id, key.name, key.redacted) == ("", "", "")
    assert (key.create_time, key.modify_time, key.modified_by) == ("", "", "")
    assert (key.acl_strings, key.secrets, key.revision) == ((), (), 0)
    assert (key.disabled, key.expire_at, key.key_blocked_until, key.team_blocked_until) == (
        False,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"expireTime": "soon"}, "expireTime"),
        ({"apiKeyBlockedUntil": "soon"}, "apiKeyBlockedUntil"),
        ({"teamBlockedUntil": "soon"}, "teamBlockedUntil"),
        ({"secrets": [{"digest": "d", "expireTime": "soon"}]}, "secrets.expireTime"),
    ],
)
def test_a_malformed_time_in_a_view_names_its_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        record(**fields)
    assert caught.value.field == field


async def _get(app: Gateway, path: str) -> httpx2.Response:
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://gateway"
    ) as client:
        return await client.get(path, headers={"Authorization": f"Bearer {SECRET}"})


@pytest.mark.parametrize(
    ("path", "disabled"),
    [("/v1/api-key", ("api_key_disabled",)), ("/v1/me", ("api_key", "disabled"))],
)
async def test_a_disabled_or_expired_key_still_reads_its_own_state(
    path: str, disabled: tuple[str, ...]
) -> None:
    # The two routes a key may use whatever its state: they are how its holder learns it.
    for fields, is_disabled in (({"disabled": True}, True), ({"expireTime": ts(NOW - 1)}, False)):
        answer = await _get(gateway(view(**fields)), path)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        for name in disabled:
            body = body[name]
        assert body is is_disabled


async def test_health_says_synced_and_the_limiter_s_state() -> None:
    app = gateway()
    assert (await _get(app, "/healthz")).json() == {
        "status": "ok",
        "synced": True,
        "limiter": "ok",
    }
    degraded = Gateway(
        GatewayConfig(cluster=US), app.replica, is_synced=lambda: False, limiter_ok=lambda: False
    )
    assert (await _get(degraded, "/healthz")).json() == {
        "status": "ok",
        "synced": False,
        "limiter": "degraded",
    }
