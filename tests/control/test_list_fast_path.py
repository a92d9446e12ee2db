"""ListApiKeys's fast path (``keyplane.control.routes.api_keys._list_now``, in front of the app)
answers exactly what FastAPI's handler answers: the same status, headers and bytes, for pages,
their tokens and every refusal (no or a bad key, the ACL, the team, each bad query), whatever
the keys hold (a budget, an expiry, limits, non-ASCII and control characters in a name).

Each case runs twice on one in-process control plane and team, with the fast path and without it
(the endpoint's attribute removed): a list reads, so the two answers are the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from keyplane.control.lenient import FAST_PATH
from keyplane.control.routes import api_keys
from tests.control.fast_paths import counting, team
from tests.support.inprocess import ControlApp, control_app

QUERIES = [
    "",
    "pageSize=2",
    "pageSize=1000",
    "pageSize=0",
    "pageSize=1001",
    "pageSize=-1",
    "pageSize=02",
    "pageSize=abc",
    "pageSize=",
    "pageSize=2&pageSize=3",
    "paginationToken=bogus",
    "paginationToken=",
    "activeOnly=true",
    "aclFilters=api-key:endpoint:chat",
    "unknown=1",
    "pageSize=2&paginationToken=<token>",
    "paginationToken=<token>",
]

BODIES: list[dict[str, Any]] = [
    {"name": "plain"},
    {
        "name": 'full \u00e9\u4e2d \x01"\\',
        "acls": ["api-key:endpoint:chat", "api-key:model:grok-4"],
        "qps": 10,
        "qpm": 600,
        "tpm": 100000,
        "expireTime": "2999-01-01T00:00:00Z",
    },
    {"name": "budget", "budget": {"cents": "500", "period": "MONTH"}},
    {"name": "no acls", "acls": []},
]


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlApp]:
    with control_app(tmp_path_factory.mktemp("listfast")) as running:
        yield running


def _run(control: ControlApp, team_id: str, secret: str, other: str, token: str) -> list[Any]:
    answers: list[Any] = []
    with control.client() as client:
        for where in (team_id, other):
            for query in QUERIES:
                url = f"/auth/teams/{where}/api-keys?{query.replace('<token>', token)}"
                for who, auth in (("key", f"Bearer {secret}"), ("none", None), ("bad", "Bearer x")):
                    headers = {} if auth is None else {"authorization": auth}
                    r = client.get(url, headers=headers)
                    answers.append(
                        (where, query, who, r.status_code, sorted(r.headers.items()), r.content)
                    )
    return answers


@pytest.mark.parametrize(
    "acls", [None, ["team-token:endpoint:CreateApiKey"]], ids=["every RPC", "no ListApiKeys"]
)
def test_the_list_fast_path_answers_byte_for_byte_what_fastapi_answers(
    control: ControlApp, monkeypatch: pytest.MonkeyPatch, acls: list[str] | None
) -> None:
    endpoint = api_keys.list_api_keys
    team_id, secret = team(control, acls)
    writer = team(control)
    other, _ = team(control)
    with control.client() as client:
        for body in BODIES * 2:
            r = client.post(
                f"/auth/teams/{writer[0]}/api-keys",
                json=body,
                headers={"authorization": f"Bearer {writer[1]}"},
            )
            assert r.status_code == 200, r.text
        first = client.get(
            f"/auth/teams/{writer[0]}/api-keys?pageSize=2",
            headers={"authorization": f"Bearer {writer[1]}"},
        ).json()
    token = first["paginationToken"]
    if acls is None:
        team_id, secret = writer  # the team with the keys, its key holding every RPC
    answered = counting(monkeypatch, endpoint, api_keys._list_now)
    fast = _run(control, team_id, secret, other, token)
    # It answered every usual query itself (the refusals it raises are not counted).
    assert answered.count(200) == (5 if acls is None else 0)
    monkeypatch.delattr(endpoint, FAST_PATH)
    slow = _run(control, team_id, secret, other, token)
    for f, s in zip(fast, slow, strict=True):
        assert f == s
    statuses = {a[1]: a[3] for a in fast if a[2] == "key" and a[0] == team_id}
    assert {a[3] for a in fast if a[2] != "key"} == {401}
    assert {a[3] for a in fast if a[2] == "key" and a[0] == other} == {403}
    if acls is None:
        assert statuses[""] == statuses["pageSize=2&paginationToken=<token>"] == 200
        assert statuses["pageSize=0"] == statuses["paginationToken=bogus"] == 400
        assert b"paginationToken" in fast[3][5]  # pageSize=2 of 8 keys has a next page
    else:
        assert set(statuses.values()) == {403}
