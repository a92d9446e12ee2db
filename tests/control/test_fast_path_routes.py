"""Every other RPC the one fast path (``keyplane.control.lenient.FastPaths``) takes answers exactly
what FastAPI's handler answers: UpdateApiKey (both paths), RotateApiKey, DeleteApiKey,
ValidateManagementKey, ListAuditEvents, ListModels, the endpoint ACLs and the propagation check —
the same status, headers and bytes for answers and refusals (no or a bad key, the ACL, the team,
bodies and queries that do not validate, unknown keys).

Each run makes a team of its own with three keys, then sends every case with each credential;
what differs by nature between the two runs (ids, secrets, times) is masked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from keyplane.control.routes import api_keys, audit, catalog, management_keys, propagation
from tests.support.fastpath import each_caller, team, with_and_without
from tests.support.inprocess import ControlApp, control_app

JSON = {"content-type": "application/json"}
MASK_UPDATE = {"apiKey": {"name": "renamed", "qps": 5}, "fieldMask": "name,qps"}

#: (name, method, path ({team}, {key0..2} filled in), body bytes or None)
CASES: list[tuple[str, str, str, bytes | None]] = [
    ("update", "PUT", "/auth/api-keys/{key0}", b'{"apiKey": {"name": "n"}, "fieldMask": "name"}'),
    ("update full", "PUT", "/auth/api-keys/{key0}", repr(MASK_UPDATE).replace("'", '"').encode()),
    ("update no mask", "PUT", "/auth/api-keys/{key0}", b'{"apiKey": {"name": "n"}}'),
    ("update bad mask", "PUT", "/auth/api-keys/{key0}", b'{"apiKey": {}, "fieldMask": 5}'),
    (
        "update bad value",
        "PUT",
        "/auth/api-keys/{key0}",
        b'{"apiKey": {"qps": -1}, "fieldMask": "qps"}',
    ),
    ("update empty", "PUT", "/auth/api-keys/{key0}", b""),
    (
        "update unknown",
        "PUT",
        "/auth/api-keys/nope",
        b'{"apiKey": {"name": "n"}, "fieldMask": "name"}',
    ),
    (
        "update in team",
        "PUT",
        "/auth/teams/{team}/api-keys",
        b'{"apiKey": {"apiKeyId": "{key1}", "disabled": true}, "fieldMask": ["disabled"]}',
    ),
    (
        "update in team, no id",
        "PUT",
        "/auth/teams/{team}/api-keys",
        b'{"apiKey": {}, "fieldMask": "name"}',
    ),
    (
        "update in another team",
        "PUT",
        "/auth/teams/other/api-keys",
        b'{"apiKey": {}, "fieldMask": "name"}',
    ),
    ("rotate", "POST", "/auth/api-keys/{key1}/rotate", None),
    ("rotate null", "POST", "/auth/api-keys/{key1}/rotate", b"null"),
    (
        "rotate with times",
        "POST",
        "/auth/api-keys/{key1}/rotate",
        b'{"oldSecretExpireTime": "2999-01-01T00:00:00Z"}',
    ),
    ("rotate bad time", "POST", "/auth/api-keys/{key1}/rotate", b'{"expireTime": 5}'),
    ("rotate a list", "POST", "/auth/api-keys/{key1}/rotate", b"[]"),
    ("rotate unknown", "POST", "/auth/api-keys/nope/rotate", None),
    ("delete", "DELETE", "/auth/api-keys/{key2}", None),
    ("delete again", "DELETE", "/auth/api-keys/{key2}", None),
    ("whoami", "GET", "/auth/management-keys/validation", None),
    ("audit", "GET", "/audit/teams/{team}/events", None),
    ("audit page", "GET", "/audit/teams/{team}/events?pageSize=2&orderBy=TIME_DESCENDING", None),
    ("audit bad order", "GET", "/audit/teams/{team}/events?orderBy=sideways", None),
    ("audit bad size", "GET", "/audit/teams/{team}/events?pageSize=x", None),
    ("audit bad time", "GET", "/audit/teams/{team}/events?eventTimeFrom=yesterday", None),
    ("audit another team", "GET", "/audit/teams/other/events", None),
    ("models", "GET", "/auth/teams/{team}/models", None),
    ("endpoint acls", "GET", "/auth/teams/{team}/endpoints", None),
    ("propagation", "GET", "/auth/api-keys/{key0}/propagation", None),
]

ENDPOINTS: list[Callable[..., Any]] = [
    api_keys.update_api_key,
    api_keys.update_api_key_in_team,
    api_keys.rotate_api_key,
    api_keys.delete_api_key,
    management_keys.validate_management_key,
    audit.list_audit_events,
    catalog.list_models,
    catalog.list_endpoints,
    propagation.check_propagation,
]


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlApp]:
    with control_app(tmp_path_factory.mktemp("fastroutes")) as running:
        yield running


def _run(control: ControlApp, acls: list[str] | None) -> list[Any]:
    team_id, secret = team(control)
    limited = secret if acls is None else team(control, acls)[1]
    answers: list[Any] = []
    with control.client() as client:
        made = [
            client.post(
                f"/auth/teams/{team_id}/api-keys",
                json={"name": f"key {i}"},
                headers={"authorization": f"Bearer {secret}"},
            ).json()["apiKeyId"]
            for i in range(3)
        ]
        fill = {"team": team_id, **{f"key{i}": key for i, key in enumerate(made)}}
        for name, method, where, body in CASES:
            path = where.format(**fill)
            content = None if body is None else body.replace(b"{key1}", made[1].encode())
            headers = JSON if body is not None else {}
            answers += each_caller(
                client, method, path, limited, content=content, headers=headers, label=(name,)
            )
    return answers


@pytest.mark.parametrize(
    "acls", [None, ["team-token:endpoint:ListApiKeys"]], ids=["every RPC", "ListApiKeys only"]
)
def test_every_rpc_on_the_fast_path_answers_what_fastapi_answers(
    control: ControlApp, monkeypatch: pytest.MonkeyPatch, acls: list[str] | None
) -> None:
    fast, seen, slow = with_and_without(monkeypatch, ENDPOINTS, lambda: _run(control, acls))
    for f, s in zip(fast, slow, strict=True):
        assert f == s
    statuses = {a[0]: a[2] for a in fast if a[1] == "key"}
    assert {a[2] for a in fast if a[1] != "key"} == {401}
    answered = {name for name, status in seen if status == 200}
    if acls is None:
        # The fast path answered each RPC itself, and the cases reach their refusals.
        assert answered >= {e.__name__ for e in ENDPOINTS}, answered
        assert statuses["update"] == statuses["rotate"] == statuses["delete"] == 200
        assert statuses["update no mask"] == statuses["update bad value"] == 400
        assert statuses["rotate unknown"] == statuses["delete again"] == 404
        assert statuses["audit another team"] == 403
    else:
        assert statuses["update"] == statuses["rotate"] == statuses["delete"] == 403
