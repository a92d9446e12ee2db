"""tpm at the gateway with small, exact token counts, so an off-by-one cannot hide.

The built-in model server's usage is exact and chosen by the request body (which a gateway forwards
untouched): the prompt "hi" is one token, and ``max_tokens`` makes the completion exactly that many.
The contract: admitted while the tokens charged in the last 60 s do not exceed ``tpm``; refused
once they strictly exceed it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.support.gateway import Key, Stack, Team, error_of, start_stack, stop_stack

CATALOG = '[[models]]\nname = "free"\n'
ACLS = ["api-key:endpoint:chat", "api-key:model:free"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("tpm-exact"), extra_config=CATALOG)
    yield running
    stop_stack(running)


@pytest.fixture
def team(stack: Stack) -> Iterator[Team]:
    fresh = stack.new_team("tpm")
    yield fresh
    fresh.close()


def ask(client: httpx2.Client, completion: int, **extra: Any) -> httpx2.Response:
    """A request whose usage is exactly 1 + ``completion`` tokens."""
    body = {
        "model": "free",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": completion,
        **extra,
    }
    return client.post("/v1/chat/completions", json=body)


def admitted(response: httpx2.Response, *, remaining: int, total: int | None = None) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["x-ratelimit-limit-tokens"] == "10"
    assert response.headers["x-ratelimit-remaining-tokens"] == str(remaining)
    if total is not None:
        usage = response.json()["usage"]
        assert (usage["prompt_tokens"], usage["total_tokens"]) == (1, total)


def refused(response: httpx2.Response, charged: int, key: Key) -> None:
    status, code, message = error_of(response)
    assert (status, code) == (429, "resource-exhausted"), response.text
    assert f"tpm limit exceeded: {charged}/10" in message, message
    assert key.redacted in message
    assert response.headers["x-ratelimit-remaining-tokens"] == "0"


@pytest.mark.parametrize(
    ("first", "charged"),
    [(9, 12), (8, 11)],
    ids=["exactly-the-limit-still-admits", "one-token-over-refuses"],
)
def test_admitted_until_the_charged_tokens_strictly_exceed_tpm(
    stack: Stack, team: Team, first: int, charged: int
) -> None:
    key = team.create_key(ACLS, tpm="10")
    with stack.client(key.secret) as client:
        admitted(ask(client, first), remaining=10, total=first + 1)  # charged 10, or 9
        admitted(ask(client, 1), remaining=10 - first - 1, total=2)  # charged 12, or 11
        refused(ask(client, 1), charged, key)


def test_a_stream_that_did_not_ask_for_usage_is_charged_exactly(stack: Stack, team: Team) -> None:
    key = team.create_key(ACLS, tpm="10")
    with stack.client(key.secret) as client:
        streamed = ask(client, 9, stream=True)  # 10 tokens, usage not requested by the client
        assert streamed.status_code == 200
        assert '"usage":{' not in streamed.text, "the usage chunk it did not ask for is stripped"
        admitted(ask(client, 1), remaining=0, total=2)  # charged 12
        refused(ask(client, 1), 12, key)


def test_a_refused_request_charges_nothing(stack: Stack, team: Team) -> None:
    key = team.create_key(ACLS, tpm="10")
    with stack.client(key.secret) as client:
        admitted(ask(client, 10), remaining=10, total=11)  # charged 11
        for _ in range(3):
            refused(ask(client, 1), 11, key)
