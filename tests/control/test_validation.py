"""What the Management API accepts, what it refuses, and what an update, a rotation, an
Idempotency-Key, ``activeOnly`` and the audit trail do — over HTTP, in-process: ``create_app(...)``
on a real SQLite file behind an ASGI transport, since no process boundary is under test here.

Every refusal is a 4xx whose ``code`` is ``invalid-argument`` and whose ``error`` names the field at
fault; never a 500, and never a half-done change.
"""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.services.context import Context
from tests.support.inprocess import ControlApp, control_app
from tests.support.management import ManagementClient
from tests.support.procs import Deployment, create_management_key, create_team_in

SECRET = re.compile(r"xai-[A-Za-z0-9]{80}")
JSON_HEADERS = {"content-type": "application/json"}


def ts(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlApp]:
    with control_app(tmp_path_factory.mktemp("validation")) as running:
        yield running


@pytest.fixture(scope="module")
def admin(control: ControlApp) -> Context:
    return control.ctx


@pytest.fixture
def team(control: ControlApp) -> Iterator[ManagementClient]:
    with control.new_team(f"val-{uuid.uuid4()}") as client:
        yield client


def assert_invalid(r: httpx2.Response, field: str, status: int = 400) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"code", "error"}
    assert body["code"] == "invalid-argument"
    assert field in body["error"], f"{field!r} is not named in {body['error']!r}"


# -- refusals ------------------------------------------------------------------------------------

BAD_CREATE = [
    ('{"name": "x",', "body"),
    ('{"name": "x" "qps": 1}', "body"),
    ("[]", "body"),
    ('"x"', "body"),
    ("[" * 5000 + "]" * 5000, "body"),
    ('{"name": "x", "qps": ' + "1" * 5000 + "}", "body"),
    ("{}", "name"),
    ('{"name": 5}', "name"),
    ('{"name": ""}', "name"),
    ('{"name": "   "}', "name"),
    ('{"name": "' + "n" * 257 + '"}', "name"),
    ('{"name": "x", "acls": "x"}', "acls"),
    ('{"name": "x", "acls": [1]}', "acls"),
    ('{"name": "x", "acls": ["foo:model:*"]}', "acls"),
    ('{"name": "x", "acls": ["api-key:foo:*"]}', "acls"),
    ('{"name": "x", "acls": ["api-key:endpoint:nope"]}', "acls"),
    ('{"name": "x", "acls": ["api-key:endpoint"]}', "acls"),
    ('{"name": "x", "acls": ["api-key:model:"]}', "acls"),
    ('{"name": "x", "acls": ["api-key:model:two words"]}', "acls"),
    ('{"name": "x", "aclStrings": ["api-key:endpoint:CHAT"]}', "acls"),
    (json.dumps({"name": "x", "acls": [f"api-key:model:m{i}" for i in range(257)]}), "acls"),
    ('{"name": "x", "qps": "abc"}', "qps"),
    ('{"name": "x", "qps": 1.5}', "qps"),
    ('{"name": "x", "qps": true}', "qps"),
    ('{"name": "x", "qps": [1]}', "qps"),
    ('{"name": "x", "qps": -1}', "qps"),
    ('{"name": "x", "qps": 2147483648}', "qps"),
    ('{"name": "x", "qps": "--5"}', "qps"),
    ('{"name": "x", "qps": "\u00b2"}', "qps"),
    ('{"name": "x", "qps": NaN}', "qps"),
    ('{"name": "x", "qps": Infinity}', "qps"),
    ('{"name": "x", "qpm": -5}', "qpm"),
    ('{"name": "x", "qpm": 1e12}', "qpm"),
    ('{"name": "x", "tpm": "12a"}', "tpm"),
    ('{"name": "x", "tpm": "1.5"}', "tpm"),
    ('{"name": "x", "tpm": ""}', "tpm"),
    ('{"name": "x", "tpm": "1e3"}', "tpm"),
    ('{"name": "x", "tpm": "-1"}', "tpm"),
    ('{"name": "x", "tpm": "--5"}', "tpm"),
    ('{"name": "x", "tpm": "\u0663"}', "tpm"),
    ('{"name": "x", "tpm": "9223372036854775808"}', "tpm"),
    ('{"name": "x", "tpm": false}', "tpm"),
    ('{"name": "x", "expireTime": "yesterday"}', "expireTime"),
    ('{"name": "x", "expireTime": "2026-13-01T00:00:00Z"}', "expireTime"),
    ('{"name": "x", "expireTime": "2026-01-01T00:00:00"}', "expireTime"),
    ('{"name": "x", "expireTime": "2026-01-01"}', "expireTime"),
    ('{"name": "x", "expireTime": 1767225600}', "expireTime"),
    ('{"name": "x", "expireTime": "0001-01-01T00:00:00+01:00"}', "expireTime"),
]


@pytest.mark.parametrize(
    ("body", "field"), [pytest.param(b, f, id=f"{f}: {b[:40]}") for b, f in BAD_CREATE]
)
def test_create_refuses(team: ManagementClient, body: str, field: str) -> None:
    r = team.http.post(team.keys_path, content=body, headers=JSON_HEADERS)

    assert_invalid(r, field)
    assert team.list_keys() == [], "a refused create creates nothing"


GOOD_KEY: dict[str, Any] = {
    "name": "before",
    "acls": ["api-key:endpoint:chat"],
    "qps": 3,
    "qpm": 60,
    "tpm": "1000",
    "expireTime": "2099-01-01T00:00:00.000000Z",
}
BAD_UPDATE: list[tuple[Any, str]] = [
    ({"apiKey": {"disabled": "maybe"}, "fieldMask": "disabled"}, "apiKey.disabled"),
    ({"apiKey": {"disabled": 2}, "fieldMask": "disabled"}, "apiKey.disabled"),
    ({"apiKey": {"qps": "abc"}, "fieldMask": "qps"}, "apiKey.qps"),
    ({"apiKey": {"qps": -1}, "fieldMask": "qps"}, "apiKey.qps"),
    ({"apiKey": {"qpm": 2**31}, "fieldMask": "qpm"}, "apiKey.qpm"),
    ({"apiKey": {"tpm": "x"}, "fieldMask": "tpm"}, "apiKey.tpm"),
    ({"apiKey": {"name": 5}, "fieldMask": "name"}, "apiKey.name"),
    ({"apiKey": {"name": ""}, "fieldMask": "name"}, "apiKey.name"),
    ({"apiKey": {}, "fieldMask": "name"}, "apiKey.name"),
    ({"apiKey": {"aclStrings": ["api-key:endpoint:nope"]}, "fieldMask": "aclStrings"}, "acl"),
    ({"apiKey": {"expireTime": "yesterday"}, "fieldMask": "expireTime"}, "apiKey.expireTime"),
    ({"apiKey": {"qps": 1}, "fieldMask": ""}, "fieldMask"),
    ({"apiKey": {"qps": 1}, "fieldMask": " , "}, "fieldMask"),
    ({"apiKey": {"qps": 1}, "fieldMask": []}, "fieldMask"),
    ({"apiKey": {"qps": 1}, "fieldMask": {"paths": []}}, "fieldMask"),
    ({"apiKey": {"qps": 1}, "fieldMask": "qps,foo"}, "fieldMask"),
    ({"apiKey": {"qps": 1}, "fieldMask": "QPS"}, "fieldMask"),
    ({"apiKey": {"qps": 1}, "fieldMask": "apiKeyId"}, "fieldMask"),
    ({"apiKey": {"qps": 1}, "fieldMask": "create_time"}, "fieldMask"),
    ({"apiKey": {"qps": 1}, "fieldMask": "redactedApiKey"}, "fieldMask"),
    ({"apiKey": {"qps": 1}, "fieldMask": "teamId"}, "fieldMask"),
    ({"apiKey": {"qps": 1}, "fieldMask": 5}, "fieldMask"),
    ({"apiKey": {"qps": 1}}, "fieldMask"),
    ({"apiKey": "x", "fieldMask": "qps"}, "apiKey"),
    ({"fieldMask": "qps"}, "apiKey"),
]


@pytest.mark.parametrize(("body", "field"), BAD_UPDATE)
def test_update_refuses(team: ManagementClient, body: Any, field: str) -> None:
    key = team.create_key(**GOOD_KEY)
    before = team.list_keys()

    r = team.http.put(f"/auth/api-keys/{key['apiKeyId']}", json=body)
    assert_invalid(r, field)
    if isinstance(body.get("apiKey"), dict):
        seed_path = {**body, "apiKey": {**body["apiKey"], "apiKeyId": key["apiKeyId"]}}
        assert_invalid(team.http.put(team.keys_path, json=seed_path), field)
    assert team.list_keys() == before, "a refused update changes nothing"


def test_the_seed_update_path_needs_the_key_id_in_the_body(team: ManagementClient) -> None:
    team.create_key(**GOOD_KEY)
    before = team.list_keys()

    r = team.http.put(team.keys_path, json={"apiKey": {"qps": 1}, "fieldMask": "qps"})

    assert_invalid(r, "apiKey.apiKeyId")
    assert team.list_keys() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"oldSecretExpireTime": "soon"}, "oldSecretExpireTime"),
        ({"oldSecretExpireTime": 5}, "oldSecretExpireTime"),
        ({"expireTime": "never"}, "expireTime"),
        ("[]", "body"),
    ],
)
def test_rotate_refuses(team: ManagementClient, body: Any, field: str) -> None:
    key = team.create_key(**GOOD_KEY)
    before = team.list_keys()

    path = f"/auth/api-keys/{key['apiKeyId']}/rotate"
    if isinstance(body, str):
        r = team.http.post(path, content=body, headers=JSON_HEADERS)
    else:
        r = team.http.post(path, json=body)

    assert_invalid(r, field)
    assert team.list_keys() == before


def test_rotate_refuses_a_grace_period_beyond_seven_days(team: ManagementClient) -> None:
    key = team.create_key(**GOOD_KEY)
    before = team.list_keys()
    path = f"/auth/api-keys/{key['apiKeyId']}/rotate"
    too_far = datetime.now(UTC) + timedelta(days=7, minutes=5)

    assert_invalid(team.http.post(path, json={"oldSecretExpireTime": ts(too_far)}), "old")
    assert team.list_keys() == before
    within = datetime.now(UTC) + timedelta(days=7, minutes=-5)
    assert team.http.post(path, json={"oldSecretExpireTime": ts(within)}).status_code == 200


BAD_LIST_QUERIES = [
    ({"pageSize": "0"}, "pageSize"),
    ({"pageSize": "1001"}, "pageSize"),
    ({"pageSize": "-1"}, "pageSize"),
    ({"pageSize": "x"}, "pageSize"),
    ({"pageSize": "1.5"}, "pageSize"),
    ({"paginationToken": "garbage"}, "paginationToken"),
    ({"paginationToken": "x" * 600}, "paginationToken"),
    ({"paginationToken": "%%%"}, "paginationToken"),
    ({"aclFilters": ""}, "aclFilters"),
    ({"aclFilters": "a" * 301}, "aclFilters"),
    ({"activeOnly": "maybe"}, "activeOnly"),
]


@pytest.mark.parametrize(("params", "field"), BAD_LIST_QUERIES)
def test_list_refuses(team: ManagementClient, params: dict[str, str], field: str) -> None:
    team.create_key()
    assert_invalid(team.http.get(team.keys_path, params=params), field)


def test_list_refuses_page_tokens_it_did_not_issue_for_this_list(
    team: ManagementClient, admin: Context, control: ControlApp
) -> None:
    for _ in range(3):
        team.create_key(acls=["api-key:endpoint:chat"])
    first = team.http.get(team.keys_path, params={"pageSize": 1}).json()
    token = first["paginationToken"]
    assert (
        team.http.get(team.keys_path, params={"pageSize": 1, "paginationToken": token}).status_code
        == 200
    )

    # Altered: every single character changed, one at a time (a sample keeps it quick).
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i in range(0, len(token), max(1, len(token) // 12)):
        for replacement in (alphabet[(alphabet.index(token[i]) + 1) % 64], "."):
            tampered = token[:i] + replacement + token[i + 1 :]
            r = team.http.get(team.keys_path, params={"pageSize": 1, "paginationToken": tampered})
            assert_invalid(r, "paginationToken")
    for tampered in (token + "A", token[:-1], "A" + token, token + "=="):
        r = team.http.get(team.keys_path, params={"pageSize": 1, "paginationToken": tampered})
        assert_invalid(r, "paginationToken")

    # Another query of the same team: the token is bound to what it pages over.
    for other in ({"activeOnly": "true"}, {"aclFilters": "api-key:endpoint:chat"}):
        r = team.http.get(team.keys_path, params={"pageSize": 1, "paginationToken": token, **other})
        assert_invalid(r, "paginationToken")

    # Another team's list, with that team's own management key.
    other_id, other_secret = create_team_in(admin, f"val-{uuid.uuid4()}")
    with control.client(other_secret) as other_client:
        other_client.post(f"/auth/teams/{other_id}/api-keys", json={"name": "o"})
        r = other_client.get(
            f"/auth/teams/{other_id}/api-keys", params={"pageSize": 1, "paginationToken": token}
        )
    assert_invalid(r, "paginationToken")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"pageSize": "0"}, "pageSize"),
        ({"pageSize": "1001"}, "pageSize"),
        ({"pageToken": "garbage"}, "pageToken"),
        ({"orderBy": "NEWEST"}, "orderBy"),
        ({"eventTimeFrom": "yesterday"}, "eventTimeFrom"),
        ({"eventTimeTo": "2026-01-01"}, "eventTimeTo"),
        ({"eventTimeFrom": "0001-01-01T00:00:00+01:00"}, "eventTimeFrom"),
        ({"eventFilter.query": "q" * 257}, "eventFilter.query"),
    ],
)
def test_audit_refuses(team: ManagementClient, params: dict[str, str], field: str) -> None:
    assert_invalid(team.http.get(f"/audit/teams/{team.team_id}/events", params=params), field)


def test_a_body_over_the_limit_is_413(team: ManagementClient, control: ControlApp) -> None:
    limit = control.settings.max_body_bytes
    assert limit == 64 * 1024
    big = json.dumps({"name": "x", "padding": "p" * limit}).encode()

    declared = team.http.post(team.keys_path, content=big, headers=JSON_HEADERS)
    chunked = team.http.post(
        team.keys_path,
        content=(big[i : i + 4096] for i in range(0, len(big), 4096)),
        headers=JSON_HEADERS,
    )

    for r in (declared, chunked):
        assert r.status_code == 413, r.text
        assert r.json()["code"] == "invalid-argument"
    just_under = json.dumps({"name": "x", "padding": "p" * (limit - 100)})
    assert team.http.post(team.keys_path, content=just_under, headers=JSON_HEADERS).is_success
    assert len(team.list_keys()) == 1


@pytest.mark.parametrize(
    "content_type", ["application/xml", "multipart/form-data; boundary=x", "text/html", "image/png"]
)
def test_an_unsupported_content_type_is_415(team: ManagementClient, content_type: str) -> None:
    r = team.http.post(
        team.keys_path, content='{"name": "x"}', headers={"content-type": content_type}
    )

    assert r.status_code == 415, r.text
    assert r.json()["code"] == "invalid-argument"
    assert team.list_keys() == []


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/auth/teams",
        "/auth/teams/{team}/nothing",
        "/v1/chat/completions",
        "/auth/api-keys",
    ],
)
def test_an_unknown_route_is_404(team: ManagementClient, path: str) -> None:
    r = team.http.get(path.format(team=team.team_id))

    assert r.status_code == 404, r.text
    assert r.json()["code"] == "not-found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", "/auth/api-keys/{key}"),
        ("GET", "/auth/api-keys/{key}"),
        ("POST", "/auth/api-keys/{key}"),
        ("DELETE", "/auth/teams/{team}/api-keys"),
        ("GET", "/auth/api-keys/{key}/rotate"),
        ("POST", "/auth/teams/{team}/models"),
    ],
)
def test_a_wrong_method_is_405(team: ManagementClient, method: str, path: str) -> None:
    key = team.create_key()
    r = team.http.request(method, path.format(team=team.team_id, key=key["apiKeyId"]))

    assert r.status_code == 405, r.text
    assert r.json()["code"] == "invalid-argument"
    assert team.list_keys() == [{k: v for k, v in key.items() if k != "apiKey"}]


# -- liberal in what it accepts ------------------------------------------------------------------


@pytest.mark.parametrize(("sent", "answered"), [(1000, "1000"), ("1000", "1000"), (0, "0")])
def test_tpm_is_accepted_as_an_integer_or_a_string_and_answered_as_a_string(
    team: ManagementClient, sent: Any, answered: str
) -> None:
    key = team.create_key(tpm=sent)
    assert key["tpm"] == answered
    r = team.update(key["apiKeyId"], {"tpm": sent}, "tpm")
    assert r.json()["tpm"] == answered
    assert team.get_key(key["apiKeyId"])["tpm"] == answered


def test_qps_and_qpm_as_digit_strings_are_numbers_in_the_answer(team: ManagementClient) -> None:
    key = team.create_key(qps="5", qpm=" 60 ")
    assert (key["qps"], key["qpm"]) == (5, 60)


@pytest.mark.parametrize("alias", ["acls", "aclStrings", "acl_strings"])
def test_acls_may_be_sent_under_either_name(team: ManagementClient, alias: str) -> None:
    acls = ["api-key:endpoint:chat", "api-key:model:grok-4"]

    key = team.create_key(**{alias: acls})

    assert key["aclStrings"] == acls
    updated = team.update(key["apiKeyId"], {alias: acls[:1]}, "aclStrings").json()
    assert updated["aclStrings"] == acls[:1]


def test_a_model_acl_may_name_a_model_the_catalog_does_not_have_yet(team: ManagementClient) -> None:
    acls = ["api-key:model:grok-99-preview", "api-key:model:meta-llama/Llama-3.1-8B:q4"]
    assert team.create_key(acls=acls)["aclStrings"] == acls


def test_duplicate_acls_are_kept_once_in_order(team: ManagementClient) -> None:
    acls = ["api-key:model:*", "api-key:endpoint:chat", "api-key:model:*"]
    assert team.create_key(acls=acls)["aclStrings"] == ["api-key:model:*", "api-key:endpoint:chat"]


@pytest.mark.parametrize(
    ("mask", "api_key", "expected"),
    [
        ("expire_time", {"expire_time": "2098-01-01T00:00:00Z"}, {"expireTime": "2098"}),
        ("expireTime", {"expireTime": "2098-01-01T00:00:00Z"}, {"expireTime": "2098"}),
        ("acl_strings", {"aclStrings": ["api-key:endpoint:image"]}, {"aclStrings": "image"}),
        ("acls", {"acls": ["api-key:endpoint:image"]}, {"aclStrings": "image"}),
        (" name , qpm ", {"name": "n2", "qpm": 9}, {"name": "n2", "qpm": 9}),
        (["name", "qpm"], {"name": "n2", "qpm": 9}, {"name": "n2", "qpm": 9}),
        ({"paths": ["qps", "expire_time"]}, {"qps": 1}, {"qps": 1, "expireTime": None}),
    ],
)
def test_field_masks_in_any_of_their_spellings(
    team: ManagementClient, mask: Any, api_key: dict[str, Any], expected: dict[str, Any]
) -> None:
    key = team.create_key(**GOOD_KEY)

    r = team.update(key["apiKeyId"], api_key, mask)

    assert r.status_code == 200, r.text
    got = r.json()
    for name, value in expected.items():
        if value is None:
            assert name not in got
        elif isinstance(value, str) and name in ("expireTime", "aclStrings"):
            assert value in str(got[name])
        else:
            assert got[name] == value
    assert got == team.get_key(key["apiKeyId"])


@pytest.mark.parametrize(("sent", "answered"), [("true", True), ("false", False), (True, True)])
def test_disabled_as_a_boolean_or_a_string(
    team: ManagementClient, sent: Any, answered: bool
) -> None:
    key = team.create_key()
    r = team.update(key["apiKeyId"], {"disabled": sent}, "disabled")
    assert r.status_code == 200, r.text
    assert r.json()["disabled"] is answered
    assert team.get_key(key["apiKeyId"])["disabled"] is answered


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_json_is_read_whatever_the_jsonish_content_type_and_trailing_commas_forgiven(
    team: ManagementClient, content_type: str | None
) -> None:
    body = '{"name": "lenient", "acls": ["api-key:endpoint:chat",], "qps": 2,}'
    headers = {} if content_type is None else {"content-type": content_type}

    r = team.http.post(team.keys_path, content=body, headers=headers)

    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["aclStrings"], r.json()["qps"]) == (
        "lenient",
        ["api-key:endpoint:chat"],
        2,
    )


def test_a_comma_inside_a_string_is_not_taken_for_a_trailing_one(team: ManagementClient) -> None:
    name = 'a ,} b ,] "c",}'
    body = json.dumps({"name": name})[:-1] + ",}"
    r = team.http.post(team.keys_path, content=body, headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    assert r.json()["name"] == name


# -- update semantics ------------------------------------------------------------------------------


def test_a_masked_field_absent_or_null_is_cleared(team: ManagementClient) -> None:
    key = team.create_key(**GOOD_KEY)
    key_id = key["apiKeyId"]

    absent = team.update(key_id, {}, "qps").json()
    assert "qps" not in absent
    assert absent["qpm"] == 60

    nulls = team.update(
        key_id, {"qpm": None, "tpm": None, "expireTime": None}, "qpm,tpm,expireTime"
    )
    assert nulls.status_code == 200, nulls.text
    assert not {"qps", "qpm", "tpm", "expireTime"} & set(nulls.json())

    cleared = team.update(key_id, {"disabled": True}, "disabled").json()
    assert cleared["disabled"] is True
    assert team.update(key_id, {}, "disabled,aclStrings").json()["disabled"] is False
    final = team.get_key(key_id)
    assert final["aclStrings"] == []
    assert final["name"] == "before"
    assert not {"qps", "qpm", "tpm", "expireTime"} & set(final)


def test_lists_are_replaced_not_merged(team: ManagementClient) -> None:
    key = team.create_key(acls=["api-key:endpoint:chat", "api-key:model:grok-4"])

    r = team.update(key["apiKeyId"], {"aclStrings": ["api-key:endpoint:image"]}, "aclStrings")

    assert r.json()["aclStrings"] == ["api-key:endpoint:image"]
    assert team.get_key(key["apiKeyId"])["aclStrings"] == ["api-key:endpoint:image"]


def test_a_field_outside_the_mask_is_untouched(team: ManagementClient) -> None:
    key = team.create_key(**GOOD_KEY)
    everything = {
        "name": "changed",
        "aclStrings": ["api-key:endpoint:image"],
        "qps": 99,
        "qpm": 99,
        "tpm": "99",
        "disabled": True,
        "expireTime": "2030-01-01T00:00:00Z",
        "apiKeyId": str(uuid.uuid4()),
        "teamId": str(uuid.uuid4()),
        "createTime": "2000-01-01T00:00:00Z",
        "redactedApiKey": "xai-...zzzz",
    }

    r = team.update(key["apiKeyId"], everything, "qpm")

    assert r.status_code == 200, r.text
    expected = {k: v for k, v in key.items() if k not in ("apiKey", "modifyTime")}
    expected["qpm"] = 99
    got = team.get_key(key["apiKeyId"])
    assert {k: v for k, v in got.items() if k != "modifyTime"} == expected
    assert got["modifyTime"] > key["modifyTime"]


# -- rotation --------------------------------------------------------------------------------------


def secret_rows(dep: Deployment, key_id: str) -> dict[str, int | None]:
    """digest -> expire time (µs) of a key's live secrets, read straight from the store."""
    db = sqlite3.connect(f"file:{dep.data_dir / 'keyplane.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "select digest, expire_time from api_key_secrets where api_key_id = ?", (key_id,)
        ).fetchall()
    finally:
        db.close()
    return dict(rows)


def digest(secret: str) -> str:
    import hashlib

    return hashlib.sha256(secret.encode()).hexdigest()


def micros(value: datetime) -> int:
    return int(value.timestamp() * 1_000_000)


def test_rotate_gives_a_new_secret_under_the_same_id(
    team: ManagementClient, control: ControlApp
) -> None:
    key = team.create_key(**GOOD_KEY)
    path = f"/auth/api-keys/{key['apiKeyId']}/rotate"

    before = datetime.now(UTC)
    r = team.http.post(path)
    after = datetime.now(UTC)

    assert r.status_code == 200, r.text
    rotated = r.json()
    assert SECRET.fullmatch(rotated["apiKey"])
    assert rotated["apiKey"] != key["apiKey"]
    assert rotated["apiKeyId"] == key["apiKeyId"]
    assert rotated["redactedApiKey"] == "xai-..." + rotated["apiKey"][-4:]
    assert rotated["createTime"] == key["createTime"]
    assert rotated["expireTime"] == key["expireTime"], "the new secret inherits the expiry"
    assert team.get_key(key["apiKeyId"])["redactedApiKey"] == rotated["redactedApiKey"]
    # Default grace: the old secret lives 24 h more; the new one as long as the key.
    rows = secret_rows(control.dep, key["apiKeyId"])
    assert rows[digest(rotated["apiKey"])] is None
    old_expiry = rows[digest(key["apiKey"])]
    assert old_expiry is not None
    assert micros(before + timedelta(hours=24)) - 1e6 <= old_expiry
    assert old_expiry <= micros(after + timedelta(hours=24)) + 1e6
    assert len(rows) == 2

    # Again, with an explicit grace and expiry: the oldest secret dies now, at most two live.
    grace = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    body = {"oldSecretExpireTime": ts(grace), "expireTime": "2097-05-05T00:00:00Z"}
    again = team.http.post(path, json=body).json()
    assert again["expireTime"] == "2097-05-05T00:00:00.000000Z"
    rows = secret_rows(control.dep, key["apiKeyId"])
    assert rows == {digest(again["apiKey"]): None, digest(rotated["apiKey"]): micros(grace)}

    # A grace in the past: the old secret dies at once.
    past = team.http.post(path, json={"oldSecretExpireTime": "2000-01-01T00:00:00Z"}).json()
    assert secret_rows(control.dep, key["apiKeyId"]) == {digest(past["apiKey"]): None}


# -- Idempotency-Key -------------------------------------------------------------------------------


def test_the_same_idempotency_key_and_body_answers_the_first_answer_again(
    team: ManagementClient,
) -> None:
    body = {"name": "once", "acls": ["api-key:model:*"], "qps": 1}
    headers = {"Idempotency-Key": f"create-{uuid.uuid4()}"}

    first = team.http.post(team.keys_path, json=body, headers=headers)
    second = team.http.post(team.keys_path, json=body, headers=headers)
    # The same request, spelled differently, is still the same request.
    respelled = team.http.post(
        team.keys_path,
        content='{"qps": "1", "aclStrings": ["api-key:model:*"], "name": "once",}',
        headers={**headers, "content-type": "text/plain"},
    )

    assert first.status_code == second.status_code == respelled.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content == respelled.content
    assert SECRET.fullmatch(second.json()["apiKey"])
    assert [k["apiKeyId"] for k in team.list_keys()] == [first.json()["apiKeyId"]]


def test_the_same_idempotency_key_with_another_body_is_409(team: ManagementClient) -> None:
    headers = {"Idempotency-Key": "k-1"}
    first = team.http.post(team.keys_path, json={"name": "one"}, headers=headers)

    other = team.http.post(team.keys_path, json={"name": "two"}, headers=headers)

    assert first.status_code == 200
    assert other.status_code == 409, other.text
    assert other.json()["code"] == "failed-precondition"
    assert first.json()["apiKey"] not in other.text
    assert [k["name"] for k in team.list_keys()] == ["one"]


def test_different_idempotency_keys_make_different_keys(team: ManagementClient) -> None:
    a = team.http.post(team.keys_path, json={"name": "x"}, headers={"Idempotency-Key": "a"})
    b = team.http.post(team.keys_path, json={"name": "x"}, headers={"Idempotency-Key": "b"})
    plain = team.http.post(team.keys_path, json={"name": "x"})

    ids = {a.json()["apiKeyId"], b.json()["apiKeyId"], plain.json()["apiKeyId"]}
    assert len(ids) == 3
    assert {k["apiKeyId"] for k in team.list_keys()} == ids


def test_an_idempotency_key_belongs_to_one_team(
    team: ManagementClient, control: ControlApp, admin: Context
) -> None:
    headers = {"Idempotency-Key": "shared-name"}
    mine = team.http.post(team.keys_path, json={"name": "x"}, headers=headers)
    other_id, other_secret = create_team_in(admin, f"val-{uuid.uuid4()}")
    with control.client(other_secret) as other:
        theirs = other.post(f"/auth/teams/{other_id}/api-keys", json={"name": "x"}, headers=headers)

    assert mine.status_code == theirs.status_code == 200
    assert "idempotent-replayed" not in theirs.headers
    assert mine.json()["apiKeyId"] != theirs.json()["apiKeyId"]


def test_an_overlong_idempotency_key_is_refused(team: ManagementClient) -> None:
    r = team.http.post(team.keys_path, json={"name": "x"}, headers={"Idempotency-Key": "k" * 256})
    assert_invalid(r, "Idempotency-Key")
    assert team.list_keys() == []


# -- activeOnly -----------------------------------------------------------------------------------


def test_active_only_drops_expired_keys(team: ManagementClient) -> None:
    # A key may be created already expired (a past expireTime is accepted): that is how an
    # expired key is made here without waiting for one to expire.
    expired = team.create_key(name="expired", expireTime="2020-01-01T00:00:00Z")
    future = team.create_key(name="future", expireTime=ts(datetime.now(UTC) + timedelta(days=1)))
    forever = team.create_key(name="forever")
    later = team.create_key(name="expired later")
    team.update(later["apiKeyId"], {"expireTime": "2021-01-01T00:00:00Z"}, "expireTime")

    all_names = [k["name"] for k in team.list_keys()]
    active = [k["name"] for k in team.list_keys(activeOnly="true")]

    assert all_names == ["expired", "future", "forever", "expired later"]
    assert active == ["future", "forever"]
    paged = []
    token = ""
    while True:
        page = team.http.get(
            team.keys_path, params={"activeOnly": "true", "pageSize": 1, "paginationToken": token}
        ).json()
        paged += [k["name"] for k in page["apiKeys"]]
        token = page.get("paginationToken")
        if not token:
            break
    assert paged == active
    assert expired["expireTime"] == "2020-01-01T00:00:00.000000Z"
    assert future["apiKeyId"] != forever["apiKeyId"]


# -- audit ----------------------------------------------------------------------------------------


def test_every_mutation_leaves_one_event(team: ManagementClient) -> None:
    owner = team.http.get("/auth/management-keys/validation").json()["ownerUserId"]
    key = team.create_key(**GOOD_KEY)
    key_id = key["apiKeyId"]
    assert team.update(key_id, {"qps": "x"}, "qps").status_code == 400  # a refusal: no event
    assert team.update(key_id, {"qps": 9}, "qps").status_code == 200
    assert team.http.post(f"/auth/api-keys/{key_id}/rotate").status_code == 200
    assert team.http.delete(f"/auth/api-keys/{key_id}").status_code == 200
    assert team.http.delete(f"/auth/api-keys/{key_id}").status_code == 404  # no event either

    events = [e for e in team.events() if e["entityId"] == key_id]

    assert [e["operation"] for e in events] == [
        "CreateApiKey",
        "UpdateApiKey",
        "RotateApiKey",
        "DeleteApiKey",
    ]
    for event in events:
        assert event["user"] == owner
        assert event["entityType"] == "API_KEY"
        assert event["description"]
        assert str(uuid.UUID(event["eventId"])) == event["eventId"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event["eventTime"])
        assert key["apiKey"] not in json.dumps(event)
    times = [e["eventTime"] for e in events]
    assert times == sorted(times)
    descending = [e for e in team.events(orderBy="TIME_DESCENDING") if e["entityId"] == key_id]
    assert descending == events[::-1]


def test_audit_pages_cover_every_event_once_in_both_orders(team: ManagementClient) -> None:
    for i in range(6):
        key = team.create_key(name=f"k{i}")
        team.update(key["apiKeyId"], {"qps": i}, "qps")

    for order in ("TIME_ASCENDING", "TIME_DESCENDING"):
        whole = team.events(orderBy=order, pageSize=1000)
        assert len(whole) == 1 + 12  # the management key's creation, then 6 creates + 6 updates
        pages: list[dict[str, Any]] = []
        token = None
        while True:
            params: dict[str, Any] = {"orderBy": order, "pageSize": 5}
            if token:
                params["pageToken"] = token
            r = team.http.get(f"/audit/teams/{team.team_id}/events", params=params)
            assert r.status_code == 200, r.text
            pages += r.json()["events"]
            token = r.json().get("nextPageToken")
            if not token:
                break
        assert pages == whole
        keyed = [(e["eventTime"], e["eventId"]) for e in whole]
        assert keyed == sorted(keyed, reverse=order == "TIME_DESCENDING")
    # A page token only continues the query it came from.
    r = team.http.get(f"/audit/teams/{team.team_id}/events", params={"pageSize": 2}).json()
    other = {"pageSize": 2, "pageToken": r["nextPageToken"], "orderBy": "TIME_DESCENDING"}
    assert_invalid(team.http.get(f"/audit/teams/{team.team_id}/events", params=other), "pageToken")


def test_audit_filters_by_text_user_and_time(team: ManagementClient, control: ControlApp) -> None:
    other_user = str(uuid.uuid4())
    _, other_secret = create_management_key(
        control.dep, team.team_id, name="second operator", owner_user_id=other_user
    )
    mine = team.create_key(name="alpha")
    with control.client(other_secret) as other:
        theirs = other.post(team.keys_path, json={"name": "beta"}).json()
        other.post(f"/auth/api-keys/{mine['apiKeyId']}/rotate")
    team.update(theirs["apiKeyId"], {"qps": 1}, "qps")
    everything = team.events()

    def matches(event: dict[str, Any], text: str) -> bool:
        return any(text in event[f] for f in ("description", "operation", "entityId"))

    for text in ("Rotate", mine["apiKeyId"], "beta", "nothing like this"):
        assert team.events(**{"eventFilter.query": text}) == [
            e for e in everything if matches(e, text)
        ]
    by_other = team.events(**{"eventFilter.userId": other_user})
    assert [e["operation"] for e in by_other] == [
        "CreateManagementKey",
        "CreateApiKey",
        "RotateApiKey",
    ]
    assert by_other == [e for e in everything if e["user"] == other_user]

    middle = everything[2]["eventTime"]
    assert team.events(eventTimeFrom=middle) == everything[2:]
    assert team.events(eventTimeTo=middle) == everything[:2]


# -- OpenAPI --------------------------------------------------------------------------------------

ROUTES = {
    ("post", "/auth/teams/{teamId}/api-keys"),
    ("get", "/auth/teams/{teamId}/api-keys"),
    ("put", "/auth/teams/{teamId}/api-keys"),
    ("put", "/auth/api-keys/{apiKeyId}"),
    ("post", "/auth/api-keys/{apiKeyId}/rotate"),
    ("delete", "/auth/api-keys/{apiKeyId}"),
    ("get", "/auth/api-keys/{apiKeyId}/propagation"),
    ("get", "/auth/teams/{teamId}/models"),
    ("get", "/auth/teams/{teamId}/endpoints"),
    ("get", "/auth/management-keys/validation"),
    ("get", "/audit/teams/{teamId}/events"),
}
CAMEL = re.compile(r"[a-z][a-zA-Z0-9]*")


def test_openapi_describes_every_route_in_camel_case(control: ControlApp) -> None:
    with control.client() as client:
        spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        for option in schema.get("anyOf", [schema]):
            if "$ref" in option:
                found: dict[str, Any] = schemas[option["$ref"].rsplit("/", 1)[1]]
                return found
        return schema

    present = {
        (method, path)
        for path, item in spec["paths"].items()
        for method in item
        if not path.startswith("/internal/")
    }
    assert present >= ROUTES
    for method, path in ROUTES:
        operation = spec["paths"][path][method]
        assert operation.get("summary"), (method, path)
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert resolve(ok).get("properties") is not None, (method, path)
        if method in ("post", "put"):
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            assert resolve(body)["properties"], (method, path)
        for name in re.findall(r"{(\w+)}", path):
            assert CAMEL.fullmatch(name)
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "query":
                assert re.fullmatch(r"[a-z][a-zA-Z0-9]*(\.[a-z][a-zA-Z0-9]*)?", parameter["name"])
        assert operation["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]

    for name, schema in schemas.items():
        for prop in schema.get("properties", {}):
            assert CAMEL.fullmatch(prop), f"{name}.{prop} is not camelCase"
    create = schemas["CreateApiKeyRequest"]["properties"]
    assert {"name", "acls", "qps", "qpm", "tpm", "expireTime"} <= set(create)
    out = schemas["ApiKeyOut"]["properties"]
    assert {"apiKeyId", "redactedApiKey", "aclStrings", "apiKey", "createTime", "tpm"} <= set(out)
    listing = spec["paths"]["/auth/teams/{teamId}/api-keys"]["get"]["parameters"]
    assert {"pageSize", "paginationToken", "aclFilters", "activeOnly"} <= {
        p["name"] for p in listing
    }
    update = resolve(
        spec["paths"]["/auth/api-keys/{apiKeyId}"]["put"]["requestBody"]["content"][
            "application/json"
        ]["schema"]
    )
    assert {"apiKey", "fieldMask"} <= set(update["properties"])


# -- never a 500 ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)  # JSON has neither
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
field_values = json_values | st.sampled_from(
    [
        "1000",
        " 7 ",
        "-1",
        "\u00b2",
        "0x10",
        "1e3",
        "true",
        "2020-01-01T00:00:00Z",
        "2099-01-01T00:00:00+05:30",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59Z",
        "api-key:model:*",
        ["api-key:endpoint:chat", "api-key:model:grok-4"],
        ["api-key:endpoint:nope"],
        2**31,
        2**63,
        -(2**63),
        1e308,
        "",
    ]
)
KEY_FIELDS = ["name", "acls", "aclStrings", "qps", "qpm", "tpm", "expireTime", "disabled", "x"]
masks = (
    st.sampled_from(
        ["name", "qps,qpm", "acls", "expire_time", "tpm,disabled", "", "apiKeyId", "bogus"]
    )
    | json_values
)


@pytest.fixture(scope="module")
def fuzz(control: ControlApp) -> Iterator[ManagementClient]:
    with control.new_team(f"fuzz-{uuid.uuid4()}") as team:
        yield team


def assert_answered(r: httpx2.Response, allowed: tuple[int, ...] = (200, 400)) -> None:
    assert r.status_code in allowed, (r.status_code, r.text)
    body = r.json()
    if r.status_code != 200:
        assert set(body) == {"code", "error"}
        assert body["code"] == "invalid-argument"
        return
    if "apiKeyId" in body:  # an ApiKey: the wire types hold whatever was sent
        assert isinstance(body["name"], str)
        assert all(isinstance(body.get(f, 0), int) for f in ("qps", "qpm"))
        assert isinstance(body.get("tpm", ""), str)
        assert isinstance(body["disabled"], bool)
        assert all(isinstance(a, str) for a in body["aclStrings"])
        for field in ("createTime", "modifyTime", "expireTime"):
            if field in body:
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", body[field])


@settings(max_examples=60, deadline=None)
@given(body=st.dictionaries(st.sampled_from(KEY_FIELDS), field_values, max_size=5))
def test_create_answers_any_body_with_200_or_400(
    fuzz: ManagementClient, body: dict[str, Any]
) -> None:
    assert_answered(fuzz.http.post(fuzz.keys_path, json={"name": "fuzz", **body}))


@settings(max_examples=60, deadline=None)
@given(
    api_key=st.dictionaries(st.sampled_from(KEY_FIELDS), field_values, max_size=4),
    mask=masks,
)
def test_update_answers_any_body_with_200_or_400(
    fuzz: ManagementClient, api_key: dict[str, Any], mask: Any
) -> None:
    key = fuzz.create_key()
    r = fuzz.update(key["apiKeyId"], api_key, mask)
    assert_answered(r)
    if r.status_code != 200:
        assert fuzz.get_key(key["apiKeyId"]) == {k: v for k, v in key.items() if k != "apiKey"}


@settings(max_examples=30, deadline=None)
@given(
    body=st.dictionaries(
        st.sampled_from(["expireTime", "oldSecretExpireTime", "x"]), field_values, max_size=2
    )
)
def test_rotate_answers_any_body_with_200_or_400(
    fuzz: ManagementClient, body: dict[str, Any]
) -> None:
    key = fuzz.create_key()
    assert_answered(fuzz.http.post(f"/auth/api-keys/{key['apiKeyId']}/rotate", json=body))


query_values = st.text(max_size=30) | st.integers().map(str)


@settings(max_examples=40, deadline=None)
@given(
    params=st.dictionaries(
        st.sampled_from(["pageSize", "paginationToken", "aclFilters", "activeOnly"]),
        query_values,
        max_size=3,
    ),
    audit=st.dictionaries(
        st.sampled_from(
            [
                "pageSize",
                "pageToken",
                "eventTimeFrom",
                "eventTimeTo",
                "eventFilter.query",
                "orderBy",
            ]
        ),
        query_values,
        max_size=3,
    ),
)
def test_list_queries_are_answered_with_200_or_400(
    fuzz: ManagementClient, params: dict[str, str], audit: dict[str, str]
) -> None:
    assert_answered(fuzz.http.get(fuzz.keys_path, params=params))
    assert_answered(fuzz.http.get(f"/audit/teams/{fuzz.team_id}/events", params=audit))
