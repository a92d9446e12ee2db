"""Streaming through the gateway end to end: relay, usage, disconnects and upstream failures.

A module-wide stack (control plane, built-in model server, one gateway). The model server's
``x-keyplane-token-latency-ms`` header sets how fast a stream is generated; ``/_stats`` shows
whether the gateway let go of an upstream request.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx2
import pytest

from tests.support.gateway import (
    WILDCARD,
    Key,
    Stack,
    Team,
    chat_body,
    error_of,
    sse_data,
    stream_chat,
)
from tests.support.procs import wait_for


def direct(stack: Stack, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The model server's own answer to ``body``, bypassing the gateway."""
    response = httpx2.post(stack.dep.model_url + path, json=body, timeout=15.0)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def tpm_refusal(client: httpx2.Client, key: Key, tpm: int) -> int:
    """Wait until ``key`` is refused by tpm; return the tokens charged that the 429 reports.

    Polls GET /v1/models/{id}, which passes the key's limits but is charged no tokens itself.
    """

    def refused() -> httpx2.Response | None:
        response = client.get("/v1/models/grok-4", headers=key.auth)
        return response if response.status_code == 429 else None

    response: httpx2.Response = wait_for(refused, timeout=10.0, what="tpm to refuse the key")
    status, code, message = error_of(response)
    assert (status, code) == (429, "resource-exhausted")
    marker = "tpm limit exceeded: "
    assert marker in message, message
    actual, limit = message.split(marker, 1)[1].rstrip(".").split("/")
    assert int(limit) == tpm
    return int(actual)


# -- relay and usage ----------------------------------------------------------------------------


def test_stream_is_relayed_chunk_by_chunk(stack: Stack, team: Team) -> None:
    key = team.create_key(WILDCARD)
    body = chat_body(max_tokens=20)
    with stack.client(key.secret) as client:
        result = stream_chat(client, body, {"x-keyplane-token-latency-ms": "100"})
    assert result.status == 200
    assert result.done
    content_times = result.content_chunk_times()
    assert len(content_times) == 20
    total = result.ended - result.started
    # The first token reached the client while the model was still generating the rest.
    assert content_times[0] - result.started < total / 2, (content_times[0], total)
    assert content_times[-1] - content_times[0] > total / 2
    # Same text as the model server gives directly.
    expected = direct(stack, "/v1/chat/completions", body)
    assert result.content() == expected["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", chat_body(max_tokens=30)),
        ("/v1/completions", {"model": "grok-4", "prompt": "Once upon", "max_tokens": 30}),
    ],
)
def test_stream_without_usage_request_hides_usage_but_is_charged_it(
    stack: Stack, team: Team, path: str, body: dict[str, Any]
) -> None:
    usage = direct(stack, path, body)["usage"]
    tpm = usage["total_tokens"] - 1  # one stream of this size trips the limit
    key = team.create_key(WILDCARD, tpm=str(tpm))
    with (
        stack.client(key.secret) as client,
        client.stream("POST", path, json={**body, "stream": True}) as response,
    ):
        assert response.status_code == 200
        events = list(sse_data(response.iter_lines()))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(data) for data in events[:-1]]
    assert len(chunks) == (32 if path == "/v1/chat/completions" else 31)  # (role,) tokens, finish
    for chunk in chunks:
        assert chunk["choices"], chunk
        assert chunk.get("usage") is None, chunk
    # The key was charged the real usage, which the model server reported to the gateway.
    with stack.client() as client:
        assert tpm_refusal(client, key, tpm) == usage["total_tokens"]


def test_stream_with_usage_request_gets_exactly_one_usage_chunk(stack: Stack, team: Team) -> None:
    body = chat_body(max_tokens=12, stream_options={"include_usage": True})
    expected = direct(stack, "/v1/chat/completions", {**body, "stream": False})["usage"]
    key = team.create_key(WILDCARD, tpm="100000")
    with stack.client(key.secret) as client:
        result = stream_chat(client, body)
        assert result.status == 200
        assert result.done
        chunks = result.chunks()
        with_usage = [c for c in chunks if c.get("usage")]
        assert len(with_usage) == 1
        assert with_usage[0] is chunks[-1]
        assert with_usage[0]["choices"] == []
        assert with_usage[0]["usage"] == expected
        after = client.post("/v1/chat/completions", json=chat_body(max_tokens=1))
        assert after.status_code == 200
        assert (
            int(after.headers["x-ratelimit-remaining-tokens"]) == 100000 - expected["total_tokens"]
        )


def test_responses_stream_is_charged_its_usage(stack: Stack, team: Team) -> None:
    body = {"model": "grok-4", "input": "Tell me", "max_output_tokens": 25}
    usage = direct(stack, "/v1/responses", body)["usage"]
    tpm = usage["total_tokens"] - 1
    key = team.create_key(WILDCARD, tpm=str(tpm))
    with (
        stack.client(key.secret) as client,
        client.stream("POST", "/v1/responses", json={**body, "stream": True}) as response,
    ):
        assert response.status_code == 200
        events = [json.loads(data) for data in sse_data(response.iter_lines())]
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["usage"] == usage
    with stack.client() as client:
        assert tpm_refusal(client, key, tpm) == usage["total_tokens"]


# -- disconnects --------------------------------------------------------------------------------


def test_client_disconnect_frees_the_upstream_and_charges_what_was_sent(
    stack: Stack, team: Team
) -> None:
    tpm = 10
    key = team.create_key(WILDCARD, tpm=str(tpm))
    body = chat_body(max_tokens=200, stream=True)
    full_usage = direct(stack, "/v1/chat/completions", {**body, "stream": False})["usage"]
    before = stack.model_stats()
    received = 0
    with (
        stack.client(key.secret) as client,
        client.stream(
            "POST",
            "/v1/chat/completions",
            json=body,
            headers={"x-keyplane-token-latency-ms": "50"},  # 200 tokens: 10 s if read to the end
        ) as response,
    ):
        assert response.status_code == 200
        for _ in sse_data(response.iter_lines()):
            received += 1
            if received == 6:  # the role chunk and five tokens
                break
    # Leaving the block closed the connection mid-stream.
    assert received == 6

    def upstream_released() -> bool:
        stats = stack.model_stats()
        return stats["disconnected"] > before["disconnected"] and stats["in_flight"] == 0

    wait_for(upstream_released, timeout=10.0, what="the upstream request to be abandoned")
    stats = stack.model_stats()
    assert stats["completed"] == before["completed"]

    with stack.client() as probe:
        charged = tpm_refusal(probe, key, tpm)
    # At least what was really consumed and streamed to the client (the prompt and the tokens
    # received); at most an estimate of the prompt from the size of the body sent upstream, plus
    # one per event relayed (a few may have been in flight when the client left).
    assert charged >= full_usage["prompt_tokens"] + received - 1, (charged, received)
    upstream_body = {**body, "stream_options": {"include_usage": True}}
    estimate = len(json.dumps(upstream_body, separators=(",", ":"))) // 4
    assert charged <= estimate + received + 10, (charged, estimate, received)
    assert charged < full_usage["total_tokens"] / 2


def test_client_giving_up_before_the_first_byte_frees_the_upstream_and_costs_nothing(
    stack: Stack, team: Team
) -> None:
    key = team.create_key(WILDCARD, tpm="1")
    before = stack.model_stats()
    with (
        stack.client(key.secret) as client,
        pytest.raises(httpx2.ReadTimeout),
    ):
        client.post(
            "/v1/chat/completions",
            json=chat_body(max_tokens=50),
            headers={"x-keyplane-latency-ms": "30000"},
            timeout=httpx2.Timeout(15.0, read=0.5),
        )

    def upstream_released() -> bool:
        stats = stack.model_stats()
        return stats["disconnected"] > before["disconnected"] and stats["in_flight"] == 0

    wait_for(upstream_released, timeout=10.0, what="the upstream request to be abandoned")
    # Nothing was produced, so nothing was charged: a tpm of 1 still admits.
    with stack.client(key.secret) as client:
        response = client.post("/v1/chat/completions", json=chat_body(max_tokens=1))
        assert response.status_code == 200, response.text
        assert response.headers["x-ratelimit-remaining-tokens"] == "1"


# -- upstream failures --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 400, 429])
def test_upstream_error_status_is_passed_through(stack: Stack, team: Team, status: int) -> None:
    key = team.create_key(WILDCARD)
    with stack.client(key.secret) as client:
        for stream in (False, True):
            response = client.post(
                "/v1/chat/completions",
                json=chat_body(stream=stream),
                headers={"x-keyplane-fail-status": str(status)},
            )
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert "injected by x-keyplane-fail-status" in error["message"]
        # The key is fine afterwards.
        assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200


def test_model_server_down_is_a_502_not_a_hang(stack: Stack, team: Team) -> None:
    key = team.create_key(WILDCARD)
    assert stack.models is not None
    stack.models.stop()
    try:
        with stack.client(key.secret) as client:
            for body in (chat_body(), chat_body(stream=True)):
                started = time.monotonic()
                response = client.post("/v1/chat/completions", json=body)
                assert time.monotonic() - started < 10.0
                status, code, message = error_of(response)
                assert (status, code) == (502, "unavailable"), response.text
                assert "model server" in message
    finally:
        stack.restart_models()
    with stack.client(key.secret) as client:
        response = client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 200, response.text
