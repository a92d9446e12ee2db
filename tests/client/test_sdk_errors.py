"""Every error code of the contract as its typed exception, and the retry policy, against real
servers (faults injected by a loopback proxy in front of the control plane)."""

from __future__ import annotations

import uuid

import httpx2
import pytest

from keyplane.client import (
    APIError,
    ApiKeyUpdate,
    AsyncClient,
    Client,
    ConfigurationError,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    KeyplaneClientError,
    NotFound,
    PermissionDenied,
    RateLimited,
    Retry,
    TransportError,
    Unauthenticated,
    Unavailable,
)
from keyplane.client._base import Call
from keyplane.client._rpc import Empty
from keyplane.client.errors import error_for
from tests.client.conftest import TeamCreds, new_team
from tests.support.faultproxy import fault_proxy
from tests.support.gateway import HELLO, Stack
from tests.support.procs import create_management_key

FAST = Retry(attempts=4, backoff=0.01, max_backoff=0.05)


class _NoAuth(httpx2.HTTPTransport):
    """Sends requests without the Authorization header the client always sets."""

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        del request.headers["authorization"]
        return super().handle_request(request)


def test_unauthenticated_both_details(team: TeamCreds) -> None:
    with (
        Client(team.base_url, team.secret, transport=_NoAuth()) as client,
        pytest.raises(Unauthenticated) as caught,
    ):
        client.validate_management_key()
    assert (caught.value.status, caught.value.code) == (401, "unauthenticated:no-credentials")
    assert caught.value.detail == "no-credentials"

    with (
        Client(team.base_url, "xai-mgmt-" + "x" * 80) as client,
        pytest.raises(Unauthenticated) as caught,
    ):
        client.list_models(team_id=team.team_id)
    assert caught.value.detail == "bad-credentials"
    assert isinstance(caught.value, APIError)
    assert isinstance(caught.value, KeyplaneClientError)


def test_invalid_argument_names_the_field(client: Client) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.create_api_key("", acls=["api-key:endpoint:chat"])
    assert caught.value.status == 400
    assert "name" in caught.value.message
    with pytest.raises(InvalidArgument) as caught:
        client.create_api_key("x", acls=["api-key:endpoint:nope"])
    assert "acl" in caught.value.message.lower()
    key = client.create_api_key("x")
    with pytest.raises(ValueError, match="at least one field"):
        client.update_api_key(key.api_key_id, ApiKeyUpdate())


def test_invalid_argument_for_size_method_and_media_type(client: Client, team: TeamCreds) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.create_api_key("big", acls=["api-key:model:" + "m" * 200] * 1000)
    assert caught.value.status == 413
    path = f"/auth/teams/{team.team_id}/api-keys"
    with pytest.raises(InvalidArgument) as caught:
        client._send(Call("PATCH", path, Empty, idempotent=False))
    assert caught.value.status == 405
    with pytest.raises(InvalidArgument) as caught:
        client._send(
            Call(
                "POST",
                path,
                Empty,
                idempotent=False,
                body={"name": "x"},
                headers={"content-type": "application/xml"},
            )
        )
    assert caught.value.status == 415


def test_permission_denied_for_a_missing_acl_and_another_team(
    stack: Stack, team: TeamCreds, client: Client
) -> None:
    _, reader = create_management_key(
        stack.dep, team.team_id, acls=["team-token:endpoint:ListApiKeys"]
    )
    with Client(team.base_url, reader) as limited:
        assert list(limited.list_api_keys(team_id=team.team_id)) == []
        with pytest.raises(PermissionDenied) as caught:
            limited.create_api_key("nope", team_id=team.team_id)
    assert caught.value.status == 403
    other = new_team(stack)
    with pytest.raises(PermissionDenied):
        list(client.list_api_keys(team_id=other.team_id))


def test_not_found_for_unknown_and_foreign_keys(stack: Stack, client: Client) -> None:
    with pytest.raises(NotFound) as caught:
        client.rotate_api_key(str(uuid.uuid4()))
    assert (caught.value.status, caught.value.code) == (404, "not-found")
    with other_client(stack) as other:
        foreign = other.create_api_key("theirs")
    with pytest.raises(NotFound) as foreign_caught:
        client.update_api_key(foreign.api_key_id, ApiKeyUpdate(name="mine"))
    assert foreign_caught.value.message == caught.value.message  # nothing told apart
    with pytest.raises(NotFound):
        client.get_propagation(foreign.api_key_id)


def other_client(stack: Stack) -> Client:
    return new_team(stack).client()


def test_failed_precondition_for_a_reused_idempotency_key(client: Client) -> None:
    token = str(uuid.uuid4())
    first = client.create_api_key("one", idempotency_key=token)
    again = client.create_api_key("one", idempotency_key=token)
    assert (again.api_key_id, again.api_key) == (first.api_key_id, first.api_key)
    with pytest.raises(FailedPrecondition) as caught:
        client.create_api_key("two", idempotency_key=token)
    assert caught.value.status == 409
    assert [k.name for k in client.list_api_keys()] == ["one"]


def test_rate_limited_carries_retry_after(client: Client, stack: Stack) -> None:
    """The contract's 429 comes from a gateway; the SDK's error mapping reads it the same way."""
    key = client.create_api_key("limited", acls=["api-key:endpoint:chat", "api-key:model:*"], qpm=1)
    client.wait_propagated(key.api_key_id, timeout=15)
    assert key.api_key is not None
    chat = Call(
        "POST",
        "/v1/chat/completions",
        Empty,
        idempotent=False,
        body={"model": "grok-4", "messages": HELLO},
    )
    with Client(stack.url(), key.api_key) as inference:
        inference._send(chat)
        with pytest.raises(RateLimited) as caught:
            inference._send(chat)
    assert (caught.value.status, caught.value.code) == (429, "resource-exhausted")
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 60


def test_unknown_statuses_and_codes_map_to_internal_error() -> None:
    assert type(error_for(500, "internal", "boom", None)) is InternalError
    assert type(error_for(418, None, "teapot", None)) is InternalError
    assert type(error_for(400, "something-new", "?", None)) is InvalidArgument
    assert type(error_for(503, None, "", None)) is Unavailable
    limited = error_for(429, None, "slow down", 2.5)
    assert isinstance(limited, RateLimited)
    assert limited.retry_after == 2.5


def test_configuration_from_arguments_or_environment(
    team: TeamCreds, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KEYPLANE_BASE_URL", raising=False)
    monkeypatch.delenv("KEYPLANE_MANAGEMENT_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="KEYPLANE_BASE_URL"):
        Client(management_key=team.secret)
    with pytest.raises(ConfigurationError, match="KEYPLANE_MANAGEMENT_KEY"):
        Client(team.base_url)
    monkeypatch.setenv("KEYPLANE_BASE_URL", team.base_url + "/")
    monkeypatch.setenv("KEYPLANE_MANAGEMENT_KEY", team.secret)
    with Client() as client:
        assert client.validate_management_key().team_id == team.team_id


# -- retries ------------------------------------------------------------------------------------


def test_idempotent_calls_retry_through_503_and_429(team: TeamCreds) -> None:
    with (
        fault_proxy(team.base_url, [503, 429, 502], retry_after=0) as proxy,
        Client(proxy.url, team.secret, retry=FAST) as client,
    ):
        assert client.validate_management_key().team_id == team.team_id
    assert proxy.taken == [503, 429, 502, "forward"]


def test_retries_give_up_after_the_attempts(team: TeamCreds) -> None:
    with (
        fault_proxy(team.base_url, [503] * 10) as proxy,
        Client(proxy.url, team.secret, retry=FAST) as client,
        pytest.raises(Unavailable) as caught,
    ):
        client.validate_management_key()
    assert caught.value.status == 503
    assert proxy.taken == [503] * 4


def test_a_long_retry_after_is_not_waited_for(team: TeamCreds) -> None:
    with (
        fault_proxy(team.base_url, [429], retry_after=3600) as proxy,
        Client(proxy.url, team.secret, retry=FAST) as client,
        pytest.raises(RateLimited) as caught,
    ):
        client.validate_management_key()
    assert caught.value.retry_after == 3600
    assert proxy.taken == [429]


def test_rotate_is_never_retried(client: Client, team: TeamCreds) -> None:
    key = client.create_api_key("r")
    with (
        fault_proxy(team.base_url, [503, "drop"]) as proxy,
        Client(proxy.url, team.secret, retry=FAST) as faulty,
    ):
        with pytest.raises(Unavailable):
            faulty.rotate_api_key(key.api_key_id)
        with pytest.raises(TransportError):
            faulty.rotate_api_key(key.api_key_id)
    assert proxy.taken == [503, "drop"]


def test_create_retried_after_a_dropped_connection_yields_one_key(team: TeamCreds) -> None:
    with (
        fault_proxy(team.base_url, ["drop"]) as proxy,
        Client(proxy.url, team.secret, team_id=team.team_id, retry=FAST) as client,
    ):
        created = client.create_api_key("once", acls=["api-key:endpoint:chat"])
    # The server made the key on the first try; the retry got the same answer, secret included.
    assert proxy.taken == ["drop", "forward"]
    assert created.api_key is not None
    with team.client() as direct:
        keys = list(direct.list_api_keys())
    assert [(k.api_key_id, k.name) for k in keys] == [(created.api_key_id, "once")]
    assert keys[0].redacted_api_key == "xai-..." + created.api_key[-4:]


def test_without_retries_the_drop_surfaces_and_the_key_exists(team: TeamCreds) -> None:
    """The control for the test above: the dropped create did reach the server."""
    with (
        fault_proxy(team.base_url, ["drop"]) as proxy,
        Client(proxy.url, team.secret, team_id=team.team_id, retry=Retry(attempts=1)) as client,
        pytest.raises(TransportError),
    ):
        client.create_api_key("lost answer")
    assert proxy.taken == ["drop"]
    with team.client() as direct:
        assert [k.name for k in direct.list_api_keys()] == ["lost answer"]


async def test_async_client_retries_and_raises_the_same_way(team: TeamCreds) -> None:
    with fault_proxy(team.base_url, ["drop"], retry_after=0) as proxy:
        async with AsyncClient(proxy.url, team.secret, team_id=team.team_id, retry=FAST) as client:
            created = await client.create_api_key("async once")
            assert proxy.taken == ["drop", "forward"]
            proxy.plan += [503, 429]
            assert [k.api_key_id async for k in client.list_api_keys()] == [created.api_key_id]
            assert proxy.taken[2:] == [503, 429, "forward"]
            with pytest.raises(NotFound):
                await client.rotate_api_key(str(uuid.uuid4()))
            proxy.plan.append(503)
            with pytest.raises(Unavailable):
                await client.rotate_api_key(created.api_key_id)
    async with AsyncClient(team.base_url, "xai-mgmt-" + "y" * 80) as client:
        with pytest.raises(Unauthenticated):
            await client.validate_management_key()
