"""Gateway enforcement end to end: ACLs, key states and the order of checks.

One control plane, the built-in model server and a gateway per cluster, as real processes on
loopback, for the whole module; each test makes its own team and keys through the Management API
and waits until the gateways report them applied.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.support.gateway import (
    HELLO,
    Key,
    Stack,
    Team,
    chat_body,
    error_of,
    from_now,
)
from tests.support.procs import wait_for

US, EU = "us-east-1", "eu-west-1"

#: One call per inference route: (name, method, path, body).
CALLS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("chat", "POST", "/v1/chat/completions", chat_body(max_tokens=3)),
    ("responses", "POST", "/v1/responses", {"model": "grok-4", "input": "hi"}),
    ("completions", "POST", "/v1/completions", {"model": "grok-4", "prompt": "hi"}),
    ("embeddings", "POST", "/v1/embeddings", {"model": "grok-embed-1", "input": "hi"}),
    ("images", "POST", "/v1/images/generations", {"model": "grok-2-image", "prompt": "a cat"}),
    ("tokenize", "POST", "/v1/tokenize-text", {"model": "grok-4", "text": "hi there"}),
    ("models", "GET", "/v1/models", None),
    ("model", "GET", "/v1/models/grok-4", None),
]  # fmt: skip


STACK_CLUSTERS = (US, EU)


@pytest.fixture
def us(stack: Stack) -> Iterator[httpx2.Client]:
    with stack.client(cluster=US) as client:
        yield client


def call(
    client: httpx2.Client, key: Key | None, method: str, path: str, body: Any = None
) -> httpx2.Response:
    headers = key.auth if key is not None else {}
    return client.request(method, path, json=body, headers=headers)


def chat(client: httpx2.Client, key: Key, model: str = "grok-4") -> httpx2.Response:
    return call(client, key, "POST", "/v1/chat/completions", chat_body(model, max_tokens=3))


def assert_denied(response: httpx2.Response, *fragments: str) -> str:
    status, code, message = error_of(response)
    assert (status, code) == (403, "permission-denied"), response.text
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- ACLs ---------------------------------------------------------------------------------------


def test_endpoint_denied(team: Team, us: httpx2.Client) -> None:
    key = team.create_key(["api-key:endpoint:embed", "api-key:model:*"])
    message = assert_denied(chat(us, key), "Access to the chat endpoint is denied")
    assert key.redacted in message
    assert key.secret not in message
    # ... while the granted endpoint works.
    ok = call(us, key, "POST", "/v1/embeddings", {"model": "grok-embed-1", "input": "hi"})
    assert ok.status_code == 200, ok.text


def test_model_denied_names_the_model(team: Team, us: httpx2.Client) -> None:
    key = team.create_key(["api-key:endpoint:chat", "api-key:model:grok-3"])
    assert_denied(
        chat(us, key, "grok-4"),
        f"The API key {key.redacted} cannot be used to make requests against grok-4",
    )
    assert chat(us, key, "grok-3").status_code == 200
    # An alias of an allowed model is allowed; an alias of a denied one is denied, by its name.
    assert chat(us, key, "grok-3-latest").status_code == 200
    assert_denied(chat(us, key, "grok-4-latest"), "against grok-4-latest")


def test_alias_grants(team: Team, us: httpx2.Client) -> None:
    by_alias = team.create_key(["api-key:endpoint:chat", "api-key:model:grok-4-latest"])
    response = chat(us, by_alias, "grok-4-latest")
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "grok-4-latest"
    # The ACL names that alias only: the canonical name and the other alias stay closed.
    assert_denied(chat(us, by_alias, "grok-4"), "against grok-4")
    assert_denied(chat(us, by_alias, "grok-4-0709"), "against grok-4-0709")

    by_canonical = team.create_key(["api-key:endpoint:chat", "api-key:model:grok-4"])
    for name in ("grok-4-latest", "grok-4-0709", "grok-4"):
        response = chat(us, by_canonical, name)
        assert response.status_code == 200, (name, response.text)


def test_wildcards_open_every_endpoint(team: Team, us: httpx2.Client) -> None:
    key = team.create_key(["api-key:endpoint:*", "api-key:model:*"])
    for name, method, path, body in CALLS:
        response = call(us, key, method, path, body)
        assert response.status_code == 200, (name, response.text)
    listed = {m["id"] for m in call(us, key, "GET", "/v1/models").json()["data"]}
    assert {"grok-4", "grok-4-latest", "grok-3", "grok-2-image", "grok-embed-1"} <= listed
    assert "grok-code-fast-1" in listed  # served in us-east-1


def test_no_acls_can_do_nothing_but_introspect(team: Team, us: httpx2.Client) -> None:
    key = team.create_key([])
    for name, method, path, body in CALLS:
        response = call(us, key, method, path, body)
        assert_denied(response, "endpoint is denied")
        assert response.status_code == 403, name
    for path in ("/v1/api-key", "/v1/me"):
        response = call(us, key, "GET", path)
        assert response.status_code == 200, (path, response.text)
    assert call(us, key, "GET", "/v1/api-key").json()["acls"] == []
    assert call(us, key, "GET", "/v1/me").json()["api_key"]["api_key_id"] == key.key_id


def test_unknown_model_is_not_found(team: Team, us: httpx2.Client) -> None:
    key = team.create_key(["api-key:endpoint:*", "api-key:model:*"])
    for response in (
        chat(us, key, "no-such-model"),
        call(us, key, "GET", "/v1/models/no-such-model"),
    ):
        status, code, message = error_of(response)
        assert (status, code) == (404, "not-found"), response.text
        assert "no-such-model" in message


def test_model_not_served_in_the_cluster_is_not_found(stack: Stack, team: Team) -> None:
    key = team.create_key(["api-key:endpoint:*", "api-key:model:*"])
    with stack.client(key.secret, EU) as eu, stack.client(key.secret, US) as us:
        body = chat_body("grok-code-fast-1", max_tokens=3)
        status, code, _ = error_of(eu.post("/v1/chat/completions", json=body))
        assert (status, code) == (404, "not-found")
        assert eu.get("/v1/models/grok-code-fast-1").status_code == 404
        eu_listed = {m["id"] for m in eu.get("/v1/models").json()["data"]}
        assert "grok-code-fast-1" not in eu_listed
        assert "grok-4" in eu_listed
        # The same request where the model is served.
        assert us.post("/v1/chat/completions", json=body).status_code == 200


def test_models_lists_only_what_the_key_may_use(team: Team, us: httpx2.Client) -> None:
    key = team.create_key(["api-key:endpoint:models", "api-key:model:grok-3"])
    response = call(us, key, "GET", "/v1/models")
    assert response.status_code == 200, response.text
    listed = [m["id"] for m in response.json()["data"]]
    assert sorted(listed) == ["grok-3", "grok-3-beta", "grok-3-latest"]
    assert call(us, key, "GET", "/v1/models/grok-3-beta").status_code == 200
    assert_denied(call(us, key, "GET", "/v1/models/grok-4"), "against grok-4")


# -- key states ---------------------------------------------------------------------------------


def test_disabled_key(team: Team, us: httpx2.Client) -> None:
    key = team.create_key(["api-key:endpoint:*", "api-key:model:*"])
    assert chat(us, key).status_code == 200
    team.update_key(key, "disabled", disabled=True)
    assert_denied(chat(us, key), "disabled", key.redacted)
    info = call(us, key, "GET", "/v1/api-key")
    assert info.status_code == 200, info.text
    assert info.json()["api_key_disabled"] is True
    me = call(us, key, "GET", "/v1/me")
    assert me.status_code == 200
    assert me.json()["api_key"]["disabled"] is True
    # And back.
    team.update_key(key, "disabled", disabled=False)
    assert chat(us, key).status_code == 200


def test_expired_key(team: Team, us: httpx2.Client) -> None:
    key = team.create_key(["api-key:endpoint:*", "api-key:model:*"], expireTime=from_now(-60))
    assert_denied(chat(us, key), "expired", key.redacted)
    info = call(us, key, "GET", "/v1/api-key")
    assert info.status_code == 200
    assert info.json()["api_key_id"] == key.key_id


def test_key_expiring_while_in_use(team: Team, us: httpx2.Client) -> None:
    key = team.create_key(["api-key:endpoint:*", "api-key:model:*"], expireTime=from_now(3))
    first = chat(us, key)
    if first.status_code == 403:  # the start-up took longer than the key's life: nothing to see
        pytest.fail("key expired before it could be used; propagation took > 3 s")
    assert first.status_code == 200, first.text
    expired = wait_for(
        lambda: chat(us, key).status_code == 403, timeout=10.0, what="the key to expire"
    )
    assert expired
    assert_denied(chat(us, key), "expired")


def test_rotated_key_grace_then_only_the_new_secret(team: Team, us: httpx2.Client) -> None:
    key = team.create_key(["api-key:endpoint:*", "api-key:model:*"])
    assert chat(us, key).status_code == 200
    grace = 3.0
    rotated_at = time.monotonic()
    new = team.rotate_key(key, oldSecretExpireTime=from_now(grace))
    assert new.secret != key.secret
    old_during_grace = chat(us, key)
    checked_at = time.monotonic()
    assert checked_at - rotated_at < grace, "propagation outlasted the grace period"
    assert old_during_grace.status_code == 200, old_during_grace.text
    assert chat(us, new).status_code == 200

    wait_for(
        lambda: chat(us, key).status_code == 400, timeout=grace + 10, what="the old secret to die"
    )
    status, code, message = error_of(chat(us, key))
    assert (status, code) == (400, "invalid-argument")
    assert "Incorrect API key provided" in message
    assert chat(us, new).status_code == 200


def test_deleted_key(team: Team, us: httpx2.Client) -> None:
    key = team.create_key(["api-key:endpoint:*", "api-key:model:*"])
    assert chat(us, key).status_code == 200
    team.delete_key(key)
    for response in (chat(us, key), call(us, key, "GET", "/v1/api-key")):
        status, code, message = error_of(response)
        assert (status, code) == (400, "invalid-argument")
        assert message.startswith("Incorrect API key provided")
        assert key.secret not in message


def test_missing_and_malformed_credentials(stack: Stack, us: httpx2.Client) -> None:
    body = chat_body(max_tokens=3)
    response = us.post("/v1/chat/completions", json=body)
    assert error_of(response) == (
        401,
        "unauthenticated:no-credentials",
        "No credentials presented.",
    )
    for authorization in (
        "Bearer not-a-key",
        "Bearer xai-short",
        "Basic " + "x" * 40,
        "Bearer xai-" + "A" * 80,  # well formed but unknown
        "Bearer xai-mgmt-" + "A" * 80,
    ):
        response = us.post(
            "/v1/chat/completions", json=body, headers={"Authorization": authorization}
        )
        status, code, message = error_of(response)
        assert (status, code) == (400, "invalid-argument"), authorization
        assert message.startswith("Incorrect API key provided"), message
    assert stack.model_stats()["in_flight"] == 0


# -- the order of checks ------------------------------------------------------------------------


def test_state_is_checked_before_acls(team: Team, us: httpx2.Client) -> None:
    key = team.create_key(["api-key:endpoint:embed"])
    team.update_key(key, "disabled", disabled=True)
    assert_denied(chat(us, key), "disabled")
    message = assert_denied(
        call(us, key, "POST", "/v1/embeddings", {"model": "grok-embed-1", "input": "hi"})
    )
    assert "disabled" in message


def test_endpoint_is_checked_before_the_model(team: Team, us: httpx2.Client) -> None:
    key = team.create_key(["api-key:endpoint:embed", "api-key:model:*"])
    assert_denied(chat(us, key, "no-such-model"), "Access to the chat endpoint is denied")
    # With the endpoint granted the same request is a 404, so the 403 above was the ACL.
    granted = team.create_key(["api-key:endpoint:chat", "api-key:model:*"])
    assert chat(us, granted, "no-such-model").status_code == 404


def test_model_existence_is_checked_before_the_model_acl(team: Team, us: httpx2.Client) -> None:
    key = team.create_key(["api-key:endpoint:chat", "api-key:model:grok-3"])
    assert chat(us, key, "no-such-model").status_code == 404


def test_rejected_requests_consume_no_quota(team: Team, us: httpx2.Client) -> None:
    # qpm, not qps: all of this surely happens inside one 60 s window, however slow the machine.
    key = team.create_key(["api-key:endpoint:chat", "api-key:model:grok-3"], qpm=1)
    for _ in range(5):
        assert_denied(chat(us, key, "grok-4"), "against grok-4")
    allowed = chat(us, key, "grok-3")
    after_allowed = chat(us, key, "grok-3")
    assert allowed.status_code == 200, allowed.text
    # The limit is live: the next one within the minute is refused.
    assert after_allowed.status_code == 429, after_allowed.text


def test_denied_requests_never_reach_the_model_server(stack: Stack, team: Team) -> None:
    key = team.create_key(["api-key:endpoint:embed", "api-key:model:grok-3"])
    before = stack.model_stats()["requests"]
    with stack.client(key.secret) as client:
        chat_denied = {"model": "grok-3", "messages": HELLO}
        assert client.post("/v1/chat/completions", json=chat_denied).status_code == 403
        model_denied = {"model": "grok-4", "input": "x"}
        assert client.post("/v1/embeddings", json=model_denied).status_code == 403
        unknown = {"model": "nope", "input": "x"}
        assert client.post("/v1/embeddings", json=unknown).status_code == 404
    assert stack.model_stats()["requests"] == before
