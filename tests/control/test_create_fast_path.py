"""CreateApiKey on the one fast path (``keyplane.control.lenient.FastPaths``, which skips FastAPI's
request handling and dependency solver) answers exactly what FastAPI's handler answers: the same
status, the same headers and the same bytes, for creates, idempotent replays and conflicts, and
every refusal (authentication before the body, the body's bounds, the ACL, the team, validation).

Each case runs twice on one in-process control plane, with the fast path and without it (the
endpoint's attribute removed), each on a team of its own; what differs by nature between two
creates (ids, secrets, times) is masked before the bytes are compared.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from keyplane.control.routes import api_keys
from tests.support.fastpath import each_caller, team, with_and_without
from tests.support.inprocess import ControlApp, control_app

JSON = {"content-type": "application/json"}

#: (name, path under the team ("" is the team's own keys path), headers, body bytes)
CASES: list[tuple[str, str, dict[str, str], bytes]] = [
    ("minimal", "", JSON, b'{"name": "a"}'),
    (
        "full",
        "",
        JSON,
        b'{"name": "full", "acls": ["api-key:endpoint:chat", "api-key:model:grok-4"], '
        b'"qps": 10, "qpm": 600, "tpm": 100000, "expireTime": "2999-01-01T00:00:00Z"}',
    ),
    ("trailing comma, form type", "", {}, b'{"name": "curl",}'),
    ("text/plain", "", {"content-type": "text/plain"}, b'{"name": "t"}'),
    ("idempotent first", "", {**JSON, "Idempotency-Key": "k1"}, b'{"name": "i"}'),
    ("idempotent replay", "", {**JSON, "Idempotency-Key": "k1"}, b'{"name": "i"}'),
    ("idempotent conflict", "", {**JSON, "Idempotency-Key": "k1"}, b'{"name": "other"}'),
    ("idempotency key too long", "", {**JSON, "Idempotency-Key": "x" * 300}, b'{"name": "i"}'),
    ("empty body", "", JSON, b""),
    ("blank body", "", JSON, b"   "),
    ("null", "", JSON, b"null"),
    ("a list", "", JSON, b"[]"),
    ("no name", "", JSON, b"{}"),
    ("name not a string", "", JSON, b'{"name": 5}'),
    ("unknown field", "", JSON, b'{"name": "a", "bogus": 1}'),
    ("negative qps", "", JSON, b'{"name": "a", "qps": -1}'),
    ("bad acl", "", JSON, b'{"name": "a", "acls": ["nope"]}'),
    ("bad expire time", "", JSON, b'{"name": "a", "expireTime": "yesterday"}'),
    ("not JSON", "", JSON, b'{"name": '),
    ("not UTF-8", "", JSON, b'{"name": "\xff"}'),
    ("unsupported type", "", {"content-type": "application/xml"}, b"<a/>"),
    ("too large", "", JSON, b'{"name": "' + b"a" * 2_000_000 + b'"}'),
    ("another team", "other", JSON, b'{"name": "a"}'),
]


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlApp]:
    with control_app(tmp_path_factory.mktemp("fastpath")) as running:
        yield running


def _run(control: ControlApp, team_id: str, secret: str, other: str) -> list[Any]:
    answers: list[Any] = []
    with control.client() as client:
        for name, where, headers, body in CASES:
            path = f"/auth/teams/{other if where else team_id}/api-keys"
            answers += each_caller(
                client, "POST", path, secret, content=body, headers=headers, label=(name,)
            )
    return answers


@pytest.mark.parametrize(
    "acls", [None, ["team-token:endpoint:ListApiKeys"]], ids=["every RPC", "no CreateApiKey"]
)
def test_the_fast_path_answers_byte_for_byte_what_fastapi_answers(
    control: ControlApp, monkeypatch: pytest.MonkeyPatch, acls: list[str] | None
) -> None:
    other, _ = team(control)
    fast, seen, slow = with_and_without(
        monkeypatch,
        [api_keys.create_api_key],
        lambda: _run(control, *team(control, acls), other),
    )
    # It answered every well-formed create itself (the refusals it raises are not counted).
    assert seen.count(("create_api_key", 200)) == (7 if acls is None else 0)
    assert [a[2] for a in fast] == [a[2] for a in slow]
    for f, s in zip(fast, slow, strict=True):
        assert f == s
    # The cases reach what they are about: creates, a replay, a conflict and each refusal.
    statuses = {a[0]: a[2] for a in fast if a[1] == "key"}
    assert {a[2] for a in fast if a[1] != "key"} == {401}
    if acls is None:
        assert statuses["minimal"] == statuses["full"] == statuses["idempotent replay"] == 200
        assert statuses["idempotent conflict"] == 409
        assert statuses["no name"] == statuses["empty body"] == 400
        assert statuses["too large"] == 413
        assert statuses["unsupported type"] == 415
        assert statuses["another team"] == 403
    else:
        # The ACL is checked before the body is validated (the body's bounds come first).
        assert statuses["minimal"] == statuses["no name"] == 403
