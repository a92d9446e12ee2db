"""Every Management API RPC through the SDK, sync and async, against a running stack."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx2
import pytest

from keyplane.client import (
    ApiKeyUpdate,
    AsyncClient,
    Budget,
    Client,
    NotFound,
    PropagationTimeout,
)
from tests.client.conftest import TeamCreds
from tests.support.gateway import HELLO, Stack

CHAT = ["api-key:endpoint:chat", "api-key:model:*"]


def test_validation_names_the_team(client: Client, team: TeamCreds) -> None:
    me = client.validate_management_key()
    assert me.team_id == team.team_id
    assert me.scope == "SCOPE_TEAM"
    assert me.redacted_api_key.startswith("xai-")
    assert team.secret not in repr(client)


def test_create_get_update_rotate_delete(client: Client, team: TeamCreds) -> None:
    expiry = datetime.now(UTC) + timedelta(days=3)
    key = client.create_api_key("ci", acls=CHAT, qps=5, qpm=100, tpm=10_000, expire_time=expiry)
    assert key.api_key is not None
    assert key.api_key.startswith("xai-")
    assert (key.team_id, key.name, key.qps, key.qpm, key.tpm) == (
        team.team_id,
        "ci",
        5,
        100,
        10_000,
    )
    assert key.acl_strings == CHAT
    assert key.expire_time is not None
    assert abs(key.expire_time - expiry) < timedelta(seconds=1)
    assert key.redacted_api_key == "xai-..." + key.api_key[-4:]

    got = client.get_api_key(key.api_key_id)
    assert got.api_key is None  # the secret is shown once
    assert (got.name, got.qpm, got.tpm) == ("ci", 100, 10_000)

    # The mask is the fields set: qpm cleared, name changed, the rest untouched.
    updated = client.update_api_key(key.api_key_id, ApiKeyUpdate(name="ci-2", qpm=None))
    assert (updated.name, updated.qpm, updated.qps, updated.tpm) == ("ci-2", None, 5, 10_000)
    # The seed document's team-path form.
    updated = client.update_api_key(
        key.api_key_id, ApiKeyUpdate(disabled=True, acl_strings=["api-key:endpoint:*"]), form="team"
    )
    assert updated.disabled is True
    assert updated.acl_strings == ["api-key:endpoint:*"]
    assert updated.name == "ci-2"

    rotated = client.rotate_api_key(key.api_key_id)
    assert rotated.api_key_id == key.api_key_id
    assert rotated.api_key is not None
    assert rotated.api_key != key.api_key

    client.delete_api_key(key.api_key_id)
    with pytest.raises(NotFound):
        client.get_api_key(key.api_key_id)
    with pytest.raises(NotFound):
        client.delete_api_key(key.api_key_id)


def test_propagation_and_the_key_works_at_every_gateway(client: Client, stack: Stack) -> None:
    key = client.create_api_key("prop", acls=CHAT)
    status = client.wait_propagated(key.api_key_id, timeout=15)
    assert set(status.ic_propagation) == {f"{c}.api.test" for c in stack.clusters}
    assert status.done
    assert status.pending() == []
    assert key.api_key is not None
    for cluster in stack.clusters:
        answer = httpx2.post(
            stack.url(cluster) + "/v1/chat/completions",
            json={"model": "grok-4", "messages": HELLO},
            headers={"Authorization": f"Bearer {key.api_key}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text

    client.update_api_key(key.api_key_id, ApiKeyUpdate(disabled=True))
    client.wait_propagated(key.api_key_id, timeout=15)
    answer = httpx2.post(
        stack.url() + "/v1/chat/completions",
        json={"model": "grok-4", "messages": HELLO},
        headers={"Authorization": f"Bearer {key.api_key}"},
        timeout=10,
    )
    assert answer.status_code == 403


def test_wait_propagated_times_out_with_the_pending_clusters(client: Client, stack: Stack) -> None:
    key = client.create_api_key("stuck", acls=CHAT)
    client.wait_propagated(key.api_key_id, timeout=15)
    stack.gateways["eu-west-1"].stop()
    try:
        client.update_api_key(key.api_key_id, ApiKeyUpdate(qps=3))
        with pytest.raises(PropagationTimeout) as caught:
            client.wait_propagated(key.api_key_id, timeout=0.5)
        assert caught.value.propagation is not None
        assert caught.value.propagation.pending() == ["eu-west-1.api.test"]
    finally:
        stack.gateways["eu-west-1"].start()  # the same gateway: its own id and credential
    client.wait_propagated(key.api_key_id, timeout=15)


def test_models_and_endpoints(client: Client, stack: Stack) -> None:
    clusters = client.list_models()
    assert {c.cluster_name for c in clusters} == set(stack.clusters)
    names = {m.name for c in clusters for m in c.all_models()}
    assert "grok-4" in names
    grok = next(m for c in clusters for m in c.language_models if m.name == "grok-4")
    assert "TEXT" in grok.input_modalities
    assert isinstance(grok.tpm, int)

    acls = client.list_endpoint_acls()
    assert "api-key:endpoint:chat" in {a.acl for a in acls}
    chat = next(a for a in acls if a.value == "chat")
    assert (chat.namespace, chat.key) == ("api-key", "endpoint")
    assert chat.description


def test_list_filters_and_single_pages(client: Client) -> None:
    chat = client.create_api_key("a", acls=CHAT)
    embed = client.create_api_key("b", acls=["api-key:endpoint:embed"])
    expired = client.create_api_key(
        "c", acls=CHAT, expire_time=datetime.now(UTC) + timedelta(seconds=1)
    )
    every = [k.api_key_id for k in client.list_api_keys(page_size=2)]
    assert every == [chat.api_key_id, embed.api_key_id, expired.api_key_id]
    filtered = client.list_api_keys(acl_filters=["api-key:endpoint:chat"])
    assert [k.api_key_id for k in filtered] == [chat.api_key_id, expired.api_key_id]

    first = client.list_api_keys_page(page_size=1)
    assert [k.api_key_id for k in first.api_keys] == [chat.api_key_id]
    assert first.pagination_token
    second = client.list_api_keys_page(page_size=1, pagination_token=first.pagination_token)
    assert [k.api_key_id for k in second.api_keys] == [embed.api_key_id]


def test_audit_events_page_through_every_mutation(client: Client, team: TeamCreds) -> None:
    keys = [client.create_api_key(f"k{i}", acls=CHAT) for i in range(5)]
    client.update_api_key(keys[0].api_key_id, ApiKeyUpdate(qpm=7))
    client.delete_api_key(keys[1].api_key_id)

    events = list(client.list_audit_events(page_size=2))
    # The team's management key was made first; then the seven mutations, in order.
    assert [e.operation for e in events] == [
        "CreateManagementKey",
        *["CreateApiKey"] * 5,
        "UpdateApiKey",
        "DeleteApiKey",
    ]
    assert [e.event_time for e in events] == sorted(e.event_time for e in events)
    assert {e.entity_id for e in events[1:]} == {k.api_key_id for k in keys}
    assert len({e.event_id for e in events}) == 8

    newest = list(client.list_audit_events(page_size=3, descending=True))
    assert [e.event_id for e in newest] == [e.event_id for e in reversed(events)]
    later = list(client.list_audit_events(time_from=events[5].event_time))
    assert [e.event_id for e in later] == [e.event_id for e in events[5:]]


async def test_async_client_every_rpc(team: TeamCreds, stack: Stack) -> None:
    async with AsyncClient(team.base_url, team.secret) as client:
        me = await client.validate_management_key()
        assert me.team_id == team.team_id
        key = await client.create_api_key("async", acls=CHAT, tpm=500)
        assert key.api_key is not None
        assert key.tpm == 500
        status = await client.wait_propagated(key.api_key_id, timeout=15)
        assert status.done
        assert len(status.ic_propagation) == len(stack.clusters)
        listed = [k.api_key_id async for k in client.list_api_keys(page_size=1)]
        assert listed == [key.api_key_id]
        page = await client.list_api_keys_page()
        assert [k.name for k in page.api_keys] == ["async"]
        assert (await client.get_api_key(key.api_key_id)).tpm == 500
        updated = await client.update_api_key(key.api_key_id, ApiKeyUpdate(tpm=None, qps=2))
        assert (updated.tpm, updated.qps) == (None, 2)
        updated = await client.update_api_key(
            key.api_key_id, ApiKeyUpdate(name="async-2"), form="team"
        )
        assert updated.name == "async-2"
        rotated = await client.rotate_api_key(
            key.api_key_id, old_secret_expire_time=datetime.now(UTC) - timedelta(seconds=1)
        )
        assert rotated.api_key not in (None, key.api_key)
        assert (await client.get_propagation(key.api_key_id)).ic_propagation
        assert {c.cluster_name for c in await client.list_models()} == set(stack.clusters)
        assert any(a.value == "chat" for a in await client.list_endpoint_acls())
        events = [e async for e in client.list_audit_events(page_size=1, query="async")]
        assert [e.entity_id for e in events] == [key.api_key_id] * 4
        await client.delete_api_key(key.api_key_id)
        with pytest.raises(NotFound):
            await client.get_api_key(key.api_key_id)


def test_budget_is_set_read_and_cleared(client: Client) -> None:
    """keyplane's own per-key budget, through the same calls."""
    key = client.create_api_key("capped", budget=Budget(cents=500, period="DAY"))
    assert key.budget == Budget(cents=500, period="DAY")
    assert client.get_api_key(key.api_key_id).budget == Budget(cents=500, period="DAY")
    updated = client.update_api_key(key.api_key_id, ApiKeyUpdate(budget=Budget(cents=900)))
    assert updated.budget == Budget(cents=900, period="MONTH")
    assert client.update_api_key(key.api_key_id, ApiKeyUpdate(budget=None)).budget is None
    assert ApiKeyUpdate(budget=None, qps=1).field_mask() == "qps,budget"
