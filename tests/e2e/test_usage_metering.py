"""Metering end to end: every request through a real gateway is counted once, with the model
server's own token counts, priced from the catalog; refused requests are counted too."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest

from tests.support.gateway import WILDCARD, Stack, chat_body, start_stack, stop_stack
from tests.support.procs import OPERATOR
from tests.support.usage import counted, wait_counted

CONFIG = """
[usage]
ship_interval = 0.05

[[models]]
name = "priced"
[models.prices]
prompt_text_token_price = "2000"
completion_text_token_price = "10000"

[[models]]
name = "pix"
kind = "image"
output_modalities = ["IMAGE"]
[models.prices]
image_price = "700000000"
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("usage-metering"), extra_config=CONFIG)
    yield running
    stop_stack(running)


def test_concurrent_requests_are_counted_exactly_with_the_model_servers_tokens(
    stack: Stack,
) -> None:
    team = stack.new_team("metering")
    key = team.create_key(WILDCARD)
    httpx2.delete(stack.dep.model_url + "/_stats", headers=OPERATOR, timeout=5.0)
    n = 120

    def one(i: int) -> int:
        with stack.client(key.secret) as client:
            body = chat_body("priced", max_tokens=1 + i % 7)
            if i % 3 == 0:
                with client.stream(
                    "POST", "/v1/chat/completions", json={**body, "stream": True}
                ) as response:
                    for _ in response.iter_lines():
                        pass
                    return response.status_code
            return client.post("/v1/chat/completions", json=body).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, range(n)))
    assert statuses == [200] * n
    stats = stack.model_stats()
    totals = wait_counted(stack.dep, team.team_id, n)
    assert (totals.prompt_tokens, totals.completion_tokens) == (
        stats["prompt_tokens"],
        stats["completion_tokens"],
    )
    assert totals.cost == totals.prompt_tokens * 2000 + totals.completion_tokens * 10000
    team.close()


def test_refused_requests_are_counted_with_their_status(stack: Stack) -> None:
    team = stack.new_team("refused")
    sample_only = team.create_key(["api-key:endpoint:sample", "api-key:model:*"])
    limited = team.create_key(WILDCARD, qpm=2)
    with stack.client(sample_only.secret) as client:
        for _ in range(3):
            assert client.post("/v1/chat/completions", json=chat_body("priced")).status_code == 403
    with stack.client(limited.secret) as client:
        codes = [
            client.post("/v1/chat/completions", json=chat_body("priced")).status_code
            for _ in range(5)
        ]
    assert sorted(codes) == [200, 200, 429, 429, 429]
    wait_counted(stack.dep, team.team_id, 8)
    assert counted(stack.dep, team.team_id, status=403).requests == 3
    assert counted(stack.dep, team.team_id, status=429).requests == 3
    refused = counted(stack.dep, team.team_id, status=429)
    assert (refused.prompt_tokens, refused.completion_tokens, refused.cost) == (0, 0, 0)
    team.close()


def test_requests_without_credentials_are_counted_for_no_team(stack: Stack) -> None:
    before = counted(stack.dep, "").requests
    with stack.client() as client:
        for _ in range(4):
            assert client.post("/v1/chat/completions", json=chat_body()).status_code == 401
    wait_counted(stack.dep, "", before + 4)


def test_images_are_priced_per_image(stack: Stack) -> None:
    team = stack.new_team("images")
    key = team.create_key(WILDCARD)
    with stack.client(key.secret) as client:
        response = client.post(
            "/v1/images/generations", json={"model": "pix", "prompt": "a cat", "n": 2}
        )
    assert response.status_code == 200, response.text
    totals = wait_counted(stack.dep, team.team_id, 1)
    assert totals.cost == 2 * 700_000_000  # the catalog's imagePrice, per image
    team.close()
