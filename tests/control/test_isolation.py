"""Teams are walled off from each other, and management keys act only within their ACLs.

With team A's management key, every RPC on team B's objects is refused: a team in the path that is
not A's is a 403, a key id of B's is a 404 that reads exactly like the 404 of an id that never
existed, and B's key is untouched afterwards (as B's own management key sees it). In-process:
``create_app(...)`` behind an ASGI transport, since no process boundary is under test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from keyplane.control import routing
from keyplane.services.auth import authenticate
from tests.support.inprocess import ControlApp, control_app
from tests.support.management import ManagementClient
from tests.support.procs import create_management_key, revoke_management_key

#: What every key of these tests is created with unless a test says otherwise.
DEFAULTS = {"name": "k", "acls": ["api-key:endpoint:chat"]}


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlApp]:
    with control_app(tmp_path_factory.mktemp("isolation")) as running:
        yield running


@pytest.fixture
def a(control: ControlApp) -> Iterator[ManagementClient]:
    with control.new_team(f"iso-{uuid.uuid4()}", DEFAULTS) as team:
        yield team


@pytest.fixture
def b(control: ControlApp) -> Iterator[ManagementClient]:
    with control.new_team(f"iso-{uuid.uuid4()}", DEFAULTS) as team:
        yield team


def patch_body(key_id: str | None = None) -> dict[str, Any]:
    api_key: dict[str, Any] = {"name": "taken over", "qps": 1, "disabled": True}
    if key_id is not None:
        api_key["apiKeyId"] = key_id
    return {"apiKey": api_key, "fieldMask": "name,qps,disabled"}


# (method, path, body): {team} is the team in the path, {key} a key id.
#: (method, path, body): a body is JSON, a placeholder the test fills in, or none.
Rpc = tuple[str, str, Any]
TEAM_PATH_RPCS: list[Rpc] = [
    ("POST", "/auth/teams/{team}/api-keys", {"name": "intruder", "acls": ["api-key:model:*"]}),
    ("GET", "/auth/teams/{team}/api-keys", None),
    ("PUT", "/auth/teams/{team}/api-keys", "patch-with-key"),
    ("GET", "/auth/teams/{team}/models", None),
    ("GET", "/auth/teams/{team}/endpoints", None),
    ("GET", "/audit/teams/{team}/events", None),
]
KEY_PATH_RPCS: list[Rpc] = [
    ("PUT", "/auth/api-keys/{key}", "patch"),
    ("POST", "/auth/api-keys/{key}/rotate", {}),
    ("DELETE", "/auth/api-keys/{key}", None),
    ("GET", "/auth/api-keys/{key}/propagation", None),
]


def send(client: httpx2.Client, method: str, path: str, body: Any, key: str) -> httpx2.Response:
    if body == "patch":
        body = patch_body()
    elif body == "patch-with-key":
        body = patch_body(key)
    return client.request(method, path, json=body)


@pytest.mark.parametrize(("method", "path", "body"), TEAM_PATH_RPCS)
def test_another_teams_path_is_403_and_says_nothing_of_that_team(
    a: ManagementClient, b: ManagementClient, method: str, path: str, body: Any
) -> None:
    b_key = b.create_key(qps=7)
    before = b.list_keys()

    refused = send(a.http, method, path.format(team=b.team_id), body, b_key["apiKeyId"])
    nowhere = send(a.http, method, path.format(team=uuid.uuid4()), body, b_key["apiKeyId"])

    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "permission-denied"
    assert set(refused.json()) == {"code", "error"}
    assert (nowhere.status_code, nowhere.content) == (403, refused.content)
    assert b.list_keys() == before
    assert [e["operation"] for e in b.events() if e["entityType"] == "API_KEY"] == ["CreateApiKey"]


@pytest.mark.parametrize(("method", "path", "body"), KEY_PATH_RPCS)
def test_another_teams_key_is_404_exactly_like_a_key_that_never_was(
    a: ManagementClient, b: ManagementClient, method: str, path: str, body: Any
) -> None:
    b_key = b.create_key(qps=7, tpm="500")
    before = b.list_keys()

    refused = send(a.http, method, path.format(key=b_key["apiKeyId"]), body, "")
    never = send(a.http, method, path.format(key=uuid.uuid4()), body, "")

    assert refused.status_code == 404, refused.text
    assert refused.json()["code"] == "not-found"
    assert never.status_code == 404
    assert refused.content == never.content, "the 404 must not hint that the key exists"
    assert b.list_keys() == before
    r = b.http.get(f"/auth/api-keys/{b_key['apiKeyId']}/propagation")
    assert r.status_code == 200, "B still sees its own key"


def test_the_seed_update_path_of_ones_own_team_cannot_reach_another_teams_key(
    a: ManagementClient, b: ManagementClient
) -> None:
    b_key = b.create_key()
    before = b.list_keys()

    path = f"/auth/teams/{a.team_id}/api-keys"
    refused = a.http.put(path, json=patch_body(b_key["apiKeyId"]))
    never = a.http.put(path, json=patch_body(str(uuid.uuid4())))

    assert refused.status_code == 404, refused.text
    assert refused.content == never.content
    assert b.list_keys() == before


def test_a_team_lists_only_its_own_keys(a: ManagementClient, b: ManagementClient) -> None:
    mine = a.create_key()
    b.create_key()
    b.create_key()

    assert [k["apiKeyId"] for k in a.list_keys()] == [mine["apiKeyId"]]
    r = a.http.get(
        f"/auth/teams/{a.team_id}/api-keys", params={"aclFilters": "api-key:endpoint:chat"}
    )
    assert [k["apiKeyId"] for k in r.json()["apiKeys"]] == [mine["apiKeyId"]]
    assert all(e["entityId"] != mine["apiKeyId"] for e in b.events())


def test_a_management_key_may_only_call_the_rpcs_of_its_acls(
    control: ControlApp, a: ManagementClient
) -> None:
    key = a.create_key(qps=3)
    before = a.list_keys()
    _, secret = create_management_key(
        control.dep, a.team_id, name="list only", acls=["team-token:endpoint:ListApiKeys"]
    )
    with control.client(secret) as limited:
        _only_list_api_keys(limited, a, key)
    assert a.list_keys() == before


def _only_list_api_keys(limited: httpx2.Client, a: ManagementClient, key: dict[str, Any]) -> None:
    before = a.list_keys()
    ids = {"team": a.team_id, "key": key["apiKeyId"]}

    allowed = limited.get(f"/auth/teams/{a.team_id}/api-keys")
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["apiKeys"] == before
    whoami = limited.get("/auth/management-keys/validation")
    assert whoami.status_code == 200, "validation needs no ACL"
    assert whoami.json()["acls"] == ["team-token:endpoint:ListApiKeys"]
    assert whoami.json()["teamId"] == a.team_id

    for method, path, body in TEAM_PATH_RPCS + KEY_PATH_RPCS:
        if path.endswith("/api-keys") and method == "GET":
            continue
        r = send(limited, method, path.format(**ids), body, key["apiKeyId"])
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["code"] == "permission-denied"
        assert "team-token:endpoint:" in r.json()["error"], "the message names the missing ACL"
        # Refused before the key is looked up: an unknown key gets the same answer.
        other = send(limited, method, path.format(team=a.team_id, key=uuid.uuid4()), body, "")
        assert (other.status_code, other.content) == (403, r.content)


def test_a_revoked_management_key_is_refused(control: ControlApp, a: ManagementClient) -> None:
    key_id, secret = create_management_key(control.dep, a.team_id, name="soon revoked")
    with control.client(secret) as client:
        assert client.get(f"/auth/teams/{a.team_id}/api-keys").status_code == 200

        revoke_management_key(control.dep, key_id)

        r = client.get(f"/auth/teams/{a.team_id}/api-keys")
        assert r.status_code == 401, r.text
        assert r.json()["code"] == "unauthenticated:bad-credentials"
        r = client.post(f"/auth/teams/{a.team_id}/api-keys", json={"name": "after revocation"})
        assert r.status_code == 401
    assert a.list_keys() == []
    assert a.http.get(f"/auth/teams/{a.team_id}/api-keys").status_code == 200, (
        "the team's other management key still works"
    )


@pytest.mark.parametrize(("method", "path", "body"), TEAM_PATH_RPCS + KEY_PATH_RPCS)
def test_no_credentials_is_401(
    control: ControlApp, a: ManagementClient, method: str, path: str, body: Any
) -> None:
    key = a.create_key()
    with control.client() as anonymous:
        r = send(anonymous, method, path.format(team=a.team_id, key=key["apiKeyId"]), body, "")

    assert r.status_code == 401, r.text
    assert r.json() == {
        "code": "unauthenticated:no-credentials",
        "error": "No credentials presented.",
    }
    assert a.list_keys() == [{k: v for k, v in key.items() if k != "apiKey"}]


def test_an_api_key_is_not_a_management_key(control: ControlApp, a: ManagementClient) -> None:
    api_key = a.create_key(acls=["api-key:endpoint:*", "api-key:model:*"])["apiKey"]

    with control.client(api_key) as as_api_key:
        r = as_api_key.get(f"/auth/teams/{a.team_id}/api-keys")

    assert r.status_code == 401, r.text
    assert r.json()["code"] == "unauthenticated:bad-credentials"


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "xai-mgmt-" + "a" * 80,
        "Bearer xai-mgmt-short",
        "Bearer xai-mgmt-" + "a" * 80,
        "Bearer xai-mgmt-" + "!" * 80,
        "Bearer xai-mgmt-" + "a" * 81,
    ],
)
def test_malformed_or_unknown_credentials_are_401(
    control: ControlApp, a: ManagementClient, authorization: str
) -> None:
    with control.client() as client:
        r = client.get(
            f"/auth/teams/{a.team_id}/api-keys", headers={"Authorization": authorization}
        )

    assert r.status_code == 401, r.text
    assert r.json() == {
        "code": "unauthenticated:bad-credentials",
        "error": "The presented credentials are not valid.",
    }


def test_on_sqlite_authentication_reads_on_the_loop_and_a_revocation_counts_at_once(
    control: ControlApp, a: ManagementClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No thread hop: the key's row is read on the event loop, on the loop's own connection;
    that connection's next read still sees a revocation committed by another one."""
    on_loop: list[bool] = []

    def spy(ctx: Any, authorization: str | None, *, here: bool = False) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return authenticate(ctx, authorization, here=here)

    monkeypatch.setattr(routing, "authenticate", spy)
    key_id, secret = create_management_key(control.dep, a.team_id, name="read on the loop")
    with control.client(secret) as client:
        for _ in range(3):
            assert client.get(f"/auth/teams/{a.team_id}/api-keys").status_code == 200
        assert client.post(f"/auth/teams/{a.team_id}/api-keys", json={"name": "x"}).is_success
        assert on_loop == [True] * 4

        revoke_management_key(control.dep, key_id)

        assert client.get(f"/auth/teams/{a.team_id}/api-keys").status_code == 401
        r = client.post(f"/auth/teams/{a.team_id}/api-keys", json={"name": "after revocation"})
        assert r.status_code == 401
    assert a.http.get(f"/auth/teams/{a.team_id}/api-keys").status_code == 200
