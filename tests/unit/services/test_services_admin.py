"""Teams, management keys, operators and management-key authentication, in memory."""

from __future__ import annotations

import pytest

from keyplane.domain.errors import Conflict, InvalidArgument, NotFound, Unauthenticated
from keyplane.services import admin
from keyplane.services.auth import Principal, authenticate, reauthenticate
from tests.support.fake_uow import FakeWorld


def test_teams_are_found_by_id_or_name_and_names_are_unique(world: FakeWorld) -> None:
    team = admin.create_team(world.ctx, name="acme")
    assert admin.find_team(world.ctx, "acme") == team
    assert admin.find_team(world.ctx, team.team_id) == team
    assert admin.list_teams(world.ctx) == [team]
    with pytest.raises(Conflict):
        admin.create_team(world.ctx, name="acme")
    with pytest.raises(NotFound):
        admin.find_team(world.ctx, "nobody")
    with pytest.raises(InvalidArgument, match="name"):
        admin.create_team(world.ctx, name=" ")


def test_a_management_key_is_audited_authenticates_and_dies_when_revoked(
    world: FakeWorld,
) -> None:
    team = admin.create_team(world.ctx, name="acme")
    made = admin.create_management_key(world.ctx, team_id=team.team_id, name="ci")
    assert made.key.acls == admin.ALL_RPCS
    assert made.secret not in made.key.redacted
    created = world.store.audit[-1]
    assert (created.operation, created.entity_type, created.entity_id) == (
        "CreateManagementKey",
        "MANAGEMENT_KEY",
        made.key.key_id,
    )
    principal = authenticate(world.ctx, f"Bearer {made.secret}")
    assert principal == Principal(made.key)
    assert reauthenticate(world.ctx, made.key.key_id) == principal
    revoked = admin.revoke_management_key(world.ctx, key_id=made.key.key_id)
    assert revoked.key_id == made.key.key_id
    assert world.store.audit[-1].operation == "RevokeManagementKey"
    with pytest.raises(Unauthenticated):
        authenticate(world.ctx, f"Bearer {made.secret}")
    with pytest.raises(Unauthenticated):
        reauthenticate(world.ctx, made.key.key_id)
    with pytest.raises(NotFound):
        admin.revoke_management_key(world.ctx, key_id=made.key.key_id)
    assert [k.key_id for k in admin.list_management_keys(world.ctx, team_id=team.team_id)] == [
        made.key.key_id
    ]


def test_a_management_key_needs_a_team_and_valid_acls(world: FakeWorld) -> None:
    with pytest.raises(NotFound):
        admin.create_management_key(world.ctx, team_id="no-such-team", name="x")
    team = admin.create_team(world.ctx, name="acme")
    with pytest.raises(InvalidArgument):
        admin.create_management_key(world.ctx, team_id=team.team_id, name="x", acls=["nope"])
    with pytest.raises(InvalidArgument, match="owner_user_id"):
        admin.create_management_key(
            world.ctx, team_id=team.team_id, name="x", owner_user_id="not-a-uuid"
        )
    assert world.store.management_keys == []


@pytest.mark.parametrize(
    "header",
    [None, "", "Basic abc", "Bearer", "Bearer xai-short", "Bearer xai-mgmt-" + "A" * 80],
)
def test_authentication_refuses_what_is_not_a_live_key(
    world: FakeWorld, header: str | None
) -> None:
    with pytest.raises(Unauthenticated):
        authenticate(world.ctx, header)


def test_operators_sign_in_until_revoked(world: FakeWorld) -> None:
    made = admin.create_operator(world.ctx, name="ops")
    assert admin.authenticate_operator(world.ctx, made.secret) == made.operator
    assert admin.reauthenticate_operator(world.ctx, made.operator.operator_id) == made.operator
    assert admin.list_operators(world.ctx) == [made.operator]
    admin.revoke_operator(world.ctx, operator_id=made.operator.operator_id)
    with pytest.raises(Unauthenticated):
        admin.authenticate_operator(world.ctx, made.secret)
    with pytest.raises(Unauthenticated):
        admin.authenticate_operator(world.ctx, "xai-not-an-operator")
    with pytest.raises(NotFound):
        admin.revoke_operator(world.ctx, operator_id=made.operator.operator_id)
