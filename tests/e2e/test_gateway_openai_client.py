"""The official ``openai`` client against a gateway, with a key made through the Management API.

What a client written for the hosted service sees: same answers as the model server gives
directly, and keyplane's errors arriving as the SDK's typed exceptions.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import httpx2
import openai
import pytest

from tests.support.gateway import HELLO, WILDCARD, Key, Stack, Team


@pytest.fixture
def key(team: Team) -> Key:
    return team.create_key(WILDCARD)


def sdk(stack: Stack, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url() + "/v1", api_key=secret, max_retries=0, timeout=15.0)


def direct(stack: Stack, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx2.post(stack.dep.model_url + path, json=body, timeout=15.0)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_chat(stack: Stack, key: Key) -> None:
    expected = direct(
        stack, "/v1/chat/completions", {"model": "grok-4", "messages": HELLO, "max_tokens": 12}
    )
    with sdk(stack, key.secret) as client:
        completion = client.chat.completions.create(
            model="grok-4",
            messages=[{"role": "user", "content": "Say hello"}],
            max_tokens=12,
        )
    assert completion.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.total_tokens == expected["usage"]["total_tokens"]


def test_chat_stream(stack: Stack, key: Key) -> None:
    expected = direct(
        stack, "/v1/chat/completions", {"model": "grok-4", "messages": HELLO, "max_tokens": 12}
    )
    with sdk(stack, key.secret) as client:
        stream = client.chat.completions.create(
            model="grok-4",
            messages=[{"role": "user", "content": "Say hello"}],
            max_tokens=12,
            stream=True,
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected["choices"][0]["message"]["content"]
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_embeddings(stack: Stack, key: Key) -> None:
    expected = direct(
        stack,
        "/v1/embeddings",
        {"model": "grok-embed-1", "input": ["alpha", "beta"], "encoding_format": "float"},
    )
    with sdk(stack, key.secret) as client:
        result = client.embeddings.create(model="grok-embed-1", input=["alpha", "beta"])
    assert [d.index for d in result.data] == [0, 1]
    for got, want in zip(result.data, expected["data"], strict=True):
        assert len(got.embedding) == len(want["embedding"]) > 0
        assert got.embedding == pytest.approx(want["embedding"], abs=1e-6)
    assert result.usage.prompt_tokens == expected["usage"]["prompt_tokens"]


def test_images(stack: Stack, key: Key) -> None:
    with sdk(stack, key.secret) as client:
        result = client.images.generate(
            model="grok-2-image", prompt="a red square", n=2, response_format="b64_json"
        )
    assert result.data is not None
    assert len(result.data) == 2
    for image in result.data:
        assert image.b64_json is not None
        png = base64.b64decode(image.b64_json)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert png[12:16] == b"IHDR"
        width, height = struct.unpack(">II", png[16:24])
        assert (width, height) == (64, 64)


def test_models(stack: Stack, team: Team) -> None:
    key = team.create_key(["api-key:endpoint:models", "api-key:model:grok-3"])
    with sdk(stack, key.secret) as client:
        assert sorted(m.id for m in client.models.list()) == [
            "grok-3",
            "grok-3-beta",
            "grok-3-latest",
        ]
        assert client.models.retrieve("grok-3-latest").id == "grok-3-latest"
        with pytest.raises(openai.PermissionDeniedError):
            client.models.retrieve("grok-4")


# -- errors as the SDK's exceptions -------------------------------------------------------------


def message_of(error: openai.APIStatusError) -> str:
    """keyplane's error message as the SDK hands it over.

    keyplane answers ``{"code": ..., "error": "<message>"}``; the SDK keeps ``body["error"]`` as
    the error's ``body``, so that is where the message is.
    """
    assert isinstance(error.body, str), error.body
    return error.body


def chat_once(client: openai.OpenAI, model: str = "grok-4") -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )


def test_bad_key_is_a_bad_request(stack: Stack) -> None:
    for secret in ("not-a-key", "xai-" + "Z" * 80):
        with sdk(stack, secret) as client, pytest.raises(openai.BadRequestError) as caught:
            chat_once(client)
        assert caught.value.status_code == 400
        assert "Incorrect API key provided" in message_of(caught.value)


def test_endpoint_denied_is_permission_denied(stack: Stack, team: Team) -> None:
    key = team.create_key(["api-key:endpoint:embed", "api-key:model:*"])
    with sdk(stack, key.secret) as client, pytest.raises(openai.PermissionDeniedError) as caught:
        chat_once(client)
    assert caught.value.status_code == 403
    assert "Access to the chat endpoint is denied" in message_of(caught.value)


def test_unknown_model_is_not_found(stack: Stack, key: Key) -> None:
    with sdk(stack, key.secret) as client, pytest.raises(openai.NotFoundError) as caught:
        chat_once(client, "no-such-model")
    assert caught.value.status_code == 404
    assert "no-such-model" in message_of(caught.value)


def test_limit_is_a_rate_limit_error(stack: Stack, team: Team) -> None:
    key = team.create_key(WILDCARD, qps=1)
    with sdk(stack, key.secret) as client:
        assert chat_once(client).choices
        with pytest.raises(openai.RateLimitError) as caught:
            chat_once(client)
    error = caught.value
    assert error.status_code == 429
    assert "qps limit exceeded: 1/1" in message_of(error)
    assert int(error.response.headers["retry-after"]) >= 1
    assert error.response.headers["x-ratelimit-limit-requests"] == "1"
