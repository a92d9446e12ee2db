"""API key use cases in memory: each mutation takes one revision, logs one change and one audit
event, wakes the feed once committed, and a refused one leaves nothing behind."""

from __future__ import annotations

from typing import Any

import pytest

from keyplane.domain import keysecrets
from keyplane.domain.errors import Conflict, InvalidArgument, NotFound, PermissionDenied
from keyplane.services import admin, keys
from keyplane.services.auth import Principal, authenticate
from tests.support.fake_uow import FakeWorld


def spec(name: str = "k", **body: Any) -> keys.NewKeySpec:
    return keys.parse_new_key({"name": name, "acls": ["api-key:model:*"], **body})


def create(world: FakeWorld, principal: Principal, **body: Any) -> keys.KeyWithSecret:
    created, replay = keys.create_key(
        world.ctx, principal=principal, team_id=principal.team_id, spec=spec(**body)
    )
    assert created is not None
    assert replay is None
    return created


def test_create_writes_the_key_its_change_its_audit_event_and_wakes_the_feed(
    world: FakeWorld, principal: Principal
) -> None:
    made = create(world, principal, qps=5)
    key = made.key
    store = world.store
    assert store.api_keys[key.api_key_id] == key
    assert key.secrets[0].digest == keysecrets.digest(made.secret)
    assert key.redacted == keysecrets.redact(made.secret, "xai-")
    assert [(c.revision, c.op) for c in store.changes] == [(key.revision, "upsert")]
    assert store.changes[0].view["qps"] == 5
    event = store.audit[-1]
    assert (event.operation, event.entity_type, event.entity_id) == (
        "CreateApiKey",
        "API_KEY",
        key.api_key_id,
    )
    assert event.user_id == principal.user_id
    assert event.event_time == key.create_time
    assert store.committed == [key.revision]


def test_revisions_are_one_per_change_in_order(world: FakeWorld, principal: Principal) -> None:
    first = create(world, principal).key
    second = create(world, principal).key
    keys.update_key(
        world.ctx,
        principal=principal,
        api_key_id=first.api_key_id,
        patch={"qpm": 7},
        field_mask="qpm",
    )
    keys.delete_key(world.ctx, principal=principal, api_key_id=second.api_key_id)
    assert [c.revision for c in world.store.changes] == [1, 2, 3, 4]
    assert [c.op for c in world.store.changes] == ["upsert", "upsert", "upsert", "delete"]
    assert world.store.committed == [1, 2, 3, 4]
    assert world.store.changes[-1].view == {
        "apiKeyId": second.api_key_id,
        "teamId": principal.team_id,
        "deleted": True,
    }


def test_update_applies_the_masked_fields_only(world: FakeWorld, principal: Principal) -> None:
    key = create(world, principal, qps=1, qpm=2).key
    world.clock.advance(5)
    updated = keys.update_key(
        world.ctx,
        principal=principal,
        api_key_id=key.api_key_id,
        patch={"qps": 10, "qpm": 20, "name": "renamed"},
        field_mask="qps,name",
    )
    assert (updated.qps, updated.qpm, updated.name) == (10, 2, "renamed")
    assert updated.modify_time > key.modify_time
    assert updated.create_time == key.create_time
    assert world.store.audit[-1].description == "Updated API key 'renamed': name, qps"


def test_a_refused_update_leaves_nothing(world: FakeWorld, principal: Principal) -> None:
    key = create(world, principal).key
    before = (dict(world.store.api_keys), list(world.store.changes), len(world.store.audit))
    with pytest.raises(InvalidArgument, match=r"apiKey\.qps"):
        keys.update_key(
            world.ctx,
            principal=principal,
            api_key_id=key.api_key_id,
            patch={"qps": -1},
            field_mask="qps",
        )
    after = (dict(world.store.api_keys), list(world.store.changes), len(world.store.audit))
    assert after == before
    assert world.store.revision == key.revision
    assert world.store.committed == [key.revision]  # the feed was not woken for it


def test_rotation_keeps_the_old_secret_for_its_grace_then_only_two_live(
    world: FakeWorld, principal: Principal
) -> None:
    made = create(world, principal)
    first = keys.rotate_key(world.ctx, principal=principal, api_key_id=made.key.api_key_id, body={})
    assert first.secret != made.secret
    digests = [s.digest for s in first.key.secrets]
    assert digests == [keysecrets.digest(first.secret), keysecrets.digest(made.secret)]
    assert first.key.secrets[1].expire_time == world.clock.now() + keys.DEFAULT_GRACE
    second = keys.rotate_key(
        world.ctx, principal=principal, api_key_id=made.key.api_key_id, body={}
    )
    assert [s.digest for s in second.key.secrets] == [
        keysecrets.digest(second.secret),
        keysecrets.digest(first.secret),
    ]
    assert world.store.audit[-1].operation == "RotateApiKey"


def test_rotation_refuses_a_grace_past_seven_days(world: FakeWorld, principal: Principal) -> None:
    key = create(world, principal).key
    with pytest.raises(InvalidArgument, match="oldSecretExpireTime"):
        keys.rotate_key(
            world.ctx,
            principal=principal,
            api_key_id=key.api_key_id,
            body={"oldSecretExpireTime": "2099-01-01T00:00:00Z"},
        )


def test_delete_leaves_a_tombstone_and_the_key_is_gone(
    world: FakeWorld, principal: Principal
) -> None:
    key = create(world, principal).key
    keys.delete_key(world.ctx, principal=principal, api_key_id=key.api_key_id)
    assert key.api_key_id not in world.store.api_keys
    assert world.store.tombstones[key.api_key_id][0].revision == key.revision + 1
    with pytest.raises(NotFound):
        keys.get_key(world.ctx, principal=principal, api_key_id=key.api_key_id)
    with pytest.raises(NotFound):
        keys.delete_key(world.ctx, principal=principal, api_key_id=key.api_key_id)


def test_list_pages_filters_and_binds_its_token(world: FakeWorld, principal: Principal) -> None:
    made = [create(world, principal, name=f"key {i}").key for i in range(5)]
    page = keys.list_keys(
        world.ctx, principal=principal, team_id=principal.team_id, page_size=2, page_token=None
    )
    # One clock time for all five: (createTime, apiKeyId) order is id order.
    assert [k.api_key_id for k in page.keys] == sorted(k.api_key_id for k in made)[:2]
    seen = list(page.keys)
    while page.next_token:
        page = keys.list_keys(
            world.ctx,
            principal=principal,
            team_id=principal.team_id,
            page_size=2,
            page_token=page.next_token,
        )
        seen += page.keys
    assert sorted(k.api_key_id for k in seen) == sorted(k.api_key_id for k in made)
    first = keys.list_keys(
        world.ctx, principal=principal, team_id=principal.team_id, page_size=1, page_token=None
    )
    with pytest.raises(InvalidArgument, match="paginationToken"):
        keys.list_keys(
            world.ctx,
            principal=principal,
            team_id=principal.team_id,
            page_size=1,
            page_token=first.next_token,
            active_only=True,
        )
    named = keys.list_keys(
        world.ctx,
        principal=principal,
        team_id=principal.team_id,
        page_size=None,
        page_token=None,
        name_contains="KEY 3",
    )
    assert [k.name for k in named.keys] == ["key 3"]
    with pytest.raises(InvalidArgument, match="aclFilters"):
        keys.list_keys(
            world.ctx,
            principal=principal,
            team_id=principal.team_id,
            page_size=None,
            page_token=None,
            acl_filters=["not an acl"],
        )


def test_another_teams_keys_do_not_exist(world: FakeWorld, principal: Principal) -> None:
    key = create(world, principal).key
    other_team = admin.create_team(world.ctx, name="other")
    other = authenticate(
        world.ctx,
        "Bearer "
        + admin.create_management_key(world.ctx, team_id=other_team.team_id, name="o").secret,
    )
    with pytest.raises(NotFound):
        keys.get_key(world.ctx, principal=other, api_key_id=key.api_key_id)
    with pytest.raises(NotFound):
        keys.rotate_key(world.ctx, principal=other, api_key_id=key.api_key_id, body={})
    with pytest.raises(PermissionDenied):
        keys.list_keys(
            world.ctx, principal=other, team_id=principal.team_id, page_size=1, page_token=None
        )


def test_an_idempotent_create_replays_its_first_answer_until_rotated(
    world: FakeWorld, principal: Principal
) -> None:
    def create_once() -> tuple[keys.KeyWithSecret | None, bytes | None]:
        return keys.create_key(
            world.ctx,
            principal=principal,
            team_id=principal.team_id,
            spec=spec(),
            idempotency_key="once",
            render=lambda made: made.secret.encode(),
        )

    made, _ = create_once()
    assert made is not None
    again, replayed = create_once()
    assert again is None
    assert replayed == made.secret.encode()
    assert len(world.store.api_keys) == 1
    with pytest.raises(Conflict, match="different request body"):
        keys.create_key(
            world.ctx,
            principal=principal,
            team_id=principal.team_id,
            spec=spec(qps=3),
            idempotency_key="once",
        )
    keys.rotate_key(world.ctx, principal=principal, api_key_id=made.key.api_key_id, body={})
    with pytest.raises(Conflict, match="rotated or deleted"):
        create_once()
    with pytest.raises(InvalidArgument, match="Idempotency-Key"):
        keys.create_key(
            world.ctx,
            principal=principal,
            team_id=principal.team_id,
            spec=spec(),
            idempotency_key="",
        )
