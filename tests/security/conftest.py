"""Fixtures of the hostile-input suite: real processes on loopback, attacked from outside."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.gateway import WILDCARD, Key, Stack, start_stack, stop_stack
from tests.support.procs import Proc

#: What a log must never hold after hostile input: a trace, or an error nobody handled.
NEVER_LOGGED = ("Traceback", "unhandled_error", "Exception in ASGI application")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Control plane, model server and one gateway (us-east-1), for the whole module: a
    production configuration (the model server's test knobs are not forwarded)."""
    running = start_stack(tmp_path_factory.mktemp("security"), forward_test_headers=False)
    yield running
    stop_stack(running)


@pytest.fixture(scope="module")
def key(stack: Stack) -> Key:
    """An API key allowed every endpoint and model, enforced by the gateway."""
    team = stack.new_team("hostile")
    try:
        return team.create_key(WILDCARD)
    finally:
        team.close()


def full_log(proc: Proc) -> str:
    return proc.log_path.read_text(errors="replace")


def assert_clean_log(proc: Proc) -> None:
    text = full_log(proc)
    for marker in NEVER_LOGGED:
        assert marker not in text, f"{proc.name} logged {marker!r}:\n{text[-3000:]}"
