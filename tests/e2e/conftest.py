"""Fixtures of the end-to-end suites: a running stack per module, a fresh team per test.

A module says what its stack is with two optional names: ``STACK_CLUSTERS`` (default one cluster,
``us-east-1``) and ``STACK_CONFIG`` (TOML appended to the deployment's file, e.g. a catalog).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.gateway import Stack, Team, start_stack, stop_stack


def _module_name(request: pytest.FixtureRequest) -> str:
    return str(request.module.__name__).rsplit(".", 1)[-1].removeprefix("test_")


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The control plane, the model server and a gateway per cluster, for the whole module."""
    running = start_stack(
        tmp_path_factory.mktemp(_module_name(request)),
        getattr(request.module, "STACK_CLUSTERS", ("us-east-1",)),
        extra_config=getattr(request.module, "STACK_CONFIG", ""),
    )
    yield running
    stop_stack(running)


@pytest.fixture
def team(request: pytest.FixtureRequest, stack: Stack) -> Iterator[Team]:
    """A fresh team of the module's stack, with its management client."""
    fresh = stack.new_team(_module_name(request))
    yield fresh
    fresh.close()
