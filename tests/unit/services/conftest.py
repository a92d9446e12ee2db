"""The use cases of ``keyplane.services`` on the in-memory unit of work: no database, no app."""

from __future__ import annotations

import pytest

from keyplane.services import admin
from keyplane.services.auth import Principal, authenticate
from tests.support.fake_uow import FakeWorld, fake_context


@pytest.fixture
def world() -> FakeWorld:
    return fake_context()


@pytest.fixture
def principal(world: FakeWorld) -> Principal:
    """An all-RPC management key of a fresh team, authenticated as the Management API would."""
    team = admin.create_team(world.ctx, name="acme")
    made = admin.create_management_key(world.ctx, team_id=team.team_id, name="ci")
    return authenticate(world.ctx, f"Bearer {made.secret}")
