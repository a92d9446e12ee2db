"""A running stack (control plane, two clusters' gateways, model server) for the SDK and CLI
tests, started once for the session (starting one is the slow part); each test makes its own
team, so no test sees another's keys."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from keyplane.client import Client
from tests.support.gateway import Stack, start_stack, stop_stack

_names = itertools.count(1)


@dataclass(frozen=True)
class TeamCreds:
    base_url: str
    team_id: str
    secret: str

    def client(self) -> Client:
        return Client(self.base_url, self.secret)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("sdk"), ("us-east-1", "eu-west-1"))
    yield running
    stop_stack(running)


def new_team(stack: Stack) -> TeamCreds:
    team_id, secret = stack.dep.create_team(f"sdk-{next(_names)}")
    return TeamCreds(stack.dep.control_url, team_id, secret)


@pytest.fixture
def team(stack: Stack) -> TeamCreds:
    return new_team(stack)


@pytest.fixture
def client(team: TeamCreds) -> Iterator[Client]:
    with team.client() as sdk:
        yield sdk
