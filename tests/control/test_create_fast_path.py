"""CreateApiKey's fast path (``keyplane.control.routes.api_keys._create_now``, which skips
FastAPI's dependency solver) answers exactly what FastAPI's handler answers: the same status, the
same headers and the same bytes, for creates, idempotent replays and conflicts, and every refusal
(authentication before the body, the body's bounds, the ACL, the team, validation).

Each case runs twice on one in-process control plane, with the fast path and without it (the
endpoint's attribute removed), each on a team of its own; what differs by nature between two
creates (ids, secrets, times) is masked before the bytes are compared.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from keyplane.control.lenient import FAST_PATH
from keyplane.control.routes import api_keys
from tests.control.fast_paths import counting, team
from tests.support.inprocess import ControlApp, control_app

_MASKS = (
    (re.compile(rb"xai-[A-Za-z0-9]{80}"), b"<secret>"),
    (re.compile(rb"xai-(mgmt-)?\.\.\.[A-Za-z0-9]{4}"), b"<redacted>"),
    (re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), b"<uuid>"),
    (re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"), b"<time>"),
    (re.compile(rb'"revision":\s*"?\d+"?'), b'"revision":<n>'),
)

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


def _mask(raw: bytes) -> bytes:
    for pattern, mask in _MASKS:
        raw = pattern.sub(mask, raw)
    return raw


def _run(control: ControlApp, team_id: str, secret: str, other: str) -> list[Any]:
    answers: list[Any] = []
    with control.client() as client:
        for name, where, headers, body in CASES:
            path = f"/auth/teams/{other if where else team_id}/api-keys"
            for who, auth in (("key", f"Bearer {secret}"), ("none", None), ("bad", "Bearer x")):
                sent = dict(headers)
                if auth is not None:
                    sent["authorization"] = auth
                r = client.post(path, content=body, headers=sent)
                masked_headers = sorted((k, _mask(v.encode())) for k, v in r.headers.items())
                answers.append((name, who, r.status_code, masked_headers, _mask(r.content)))
    return answers


@pytest.mark.parametrize(
    "acls", [None, ["team-token:endpoint:ListApiKeys"]], ids=["every RPC", "no CreateApiKey"]
)
def test_the_fast_path_answers_byte_for_byte_what_fastapi_answers(
    control: ControlApp, monkeypatch: pytest.MonkeyPatch, acls: list[str] | None
) -> None:
    endpoint = api_keys.create_api_key
    answered = counting(monkeypatch, endpoint, api_keys._create_now)
    other, _ = team(control)
    fast = _run(control, *team(control, acls), other)
    # It answered every well-formed create itself (the refusals it raises are not counted).
    assert answered.count(200) == (7 if acls is None else 0)
    monkeypatch.delattr(endpoint, FAST_PATH)
    slow = _run(control, *team(control, acls), other)
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
