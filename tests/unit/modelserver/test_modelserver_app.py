"""The model server's ASGI app, in-process: routes, exact usage, errors, knobs, disconnects."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest

from keyplane.modelserver import BackgroundModelServer, ModelServerConfig, create_app
from keyplane.modelserver.app import ModelServerApp
from keyplane.modelserver.embeddings import from_base64
from keyplane.modelserver.png import PNG_SIGNATURE
from keyplane.modelserver.routes.images import IMAGE_OUTPUT_TOKENS
from keyplane.modelserver.tokenizer import count_tokens, tokenize

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": [{"type": "text", "text": "Hello there, model!"}]},
]


@dataclass
class Result:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def json(self) -> Any:
        return json.loads(self.body)

    def sse(self) -> list[str]:
        """The ``data:`` payloads of an event stream, in order."""
        return [
            line[len("data: ") :]
            for line in self.body.decode().split("\n")
            if line.startswith("data: ")
        ]


async def call(
    app: ModelServerApp,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    parts: list[bytes] | None = None,
    disconnect_after_chunks: int | None = None,
    disconnect_at_once: bool = False,
) -> Result:
    """Run one request through the app the way uvicorn would, optionally hanging up early."""
    if parts is None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body else b""
        parts = [raw]
    pending = list(parts)
    gone = asyncio.Event()
    if disconnect_at_once:
        gone.set()
    result = Result()

    async def receive() -> dict[str, Any]:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message.get("body"):
            result.chunks.append(message["body"])
            if (
                disconnect_after_chunks is not None
                and len(result.chunks) >= disconnect_after_chunks
            ):
                gone.set()

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return result


@pytest.fixture
def app() -> ModelServerApp:
    return create_app(ModelServerConfig())


def content_of(result: Result) -> str:
    return str(result.json()["choices"][0]["message"]["content"])


# -- chat completions -----------------------------------------------------------------------------


async def test_chat_usage_counts_are_exact(app: ModelServerApp) -> None:
    result = await call(app, "POST", "/v1/chat/completions", {"model": "m", "messages": MESSAGES})
    assert result.status == 200
    assert result.headers["content-type"] == "application/json"
    doc = result.json()
    assert doc["object"] == "chat.completion"
    assert doc["model"] == "m"
    choice = doc["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    content = choice["message"]["content"]
    assert content.endswith(".")
    prompt = count_tokens("You are terse.") + count_tokens("Hello there, model!")
    assert doc["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": 16,
        "total_tokens": prompt + 16,
    }
    assert count_tokens(content) == 16


async def test_chat_is_deterministic_per_model_and_prompt(app: ModelServerApp) -> None:
    request = {"model": "m", "messages": MESSAGES}
    first = content_of(await call(app, "POST", "/v1/chat/completions", request))
    again = content_of(await call(app, "POST", "/v1/chat/completions", request))
    other = content_of(await call(app, "POST", "/v1/chat/completions", {**request, "model": "n"}))
    assert first == again
    assert first != other


@pytest.mark.parametrize("field_name", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_gives_exactly_that_many_tokens(
    app: ModelServerApp, field_name: str
) -> None:
    result = await call(
        app, "POST", "/v1/chat/completions", {"model": "m", "messages": MESSAGES, field_name: 40}
    )
    doc = result.json()
    assert doc["choices"][0]["finish_reason"] == "length"
    assert doc["usage"]["completion_tokens"] == 40
    assert len(tokenize(doc["choices"][0]["message"]["content"])) == 40


async def test_max_completion_tokens_wins_over_max_tokens(app: ModelServerApp) -> None:
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 3, "max_completion_tokens": 5}
    result = await call(app, "POST", "/v1/chat/completions", body)
    assert result.json()["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("max_tokens", [0, -1, 10**9])
async def test_out_of_range_max_tokens_is_a_400(app: ModelServerApp, max_tokens: int) -> None:
    body = {"model": "m", "messages": MESSAGES, "max_tokens": max_tokens}
    result = await call(app, "POST", "/v1/chat/completions", body)
    assert result.status == 400
    assert result.json()["error"]["param"] == "max_tokens"


async def test_chat_stream_is_one_chunk_per_token_and_matches_the_plain_answer(
    app: ModelServerApp,
) -> None:
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 7}
    plain = content_of(await call(app, "POST", "/v1/chat/completions", body))
    streamed = await call(
        app,
        "POST",
        "/v1/chat/completions",
        {**body, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = streamed.sse()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    texts = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert "".join(texts) == plain
    assert len(texts) == 7
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 7
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_chat_stream_without_include_usage_has_no_usage(app: ModelServerApp) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    chunks = [
        json.loads(e) for e in (await call(app, "POST", "/v1/chat/completions", body)).sse()[:-1]
    ]
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_chat_requires_model_and_messages(app: ModelServerApp) -> None:
    missing = await call(app, "POST", "/v1/chat/completions", {"messages": MESSAGES})
    assert missing.status == 400
    assert "model" in missing.json()["error"]["message"]
    wrong = await call(app, "POST", "/v1/chat/completions", {"model": "m", "messages": "hi"})
    assert wrong.status == 400
    assert wrong.json()["error"]["param"] == "messages"


# -- legacy completions ---------------------------------------------------------------------------


async def test_completions_one_choice_per_prompt(app: ModelServerApp) -> None:
    body = {"model": "m", "prompt": ["one two", "three"], "max_tokens": 4}
    doc = (await call(app, "POST", "/v1/completions", body)).json()
    assert doc["object"] == "text_completion"
    assert [c["index"] for c in doc["choices"]] == [0, 1]
    assert all(count_tokens(c["text"]) == 4 for c in doc["choices"])
    assert doc["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}


async def test_completions_accept_token_arrays(app: ModelServerApp) -> None:
    body = {"model": "m", "prompt": [[1, 2, 3], [4]], "max_tokens": 2}
    doc = (await call(app, "POST", "/v1/completions", body)).json()
    assert doc["usage"]["prompt_tokens"] == 4
    assert len(doc["choices"]) == 2


async def test_completions_stream(app: ModelServerApp) -> None:
    body = {"model": "m", "prompt": "hi", "max_tokens": 3}
    plain = (await call(app, "POST", "/v1/completions", body)).json()["choices"][0]["text"]
    streamed = await call(
        app, "POST", "/v1/completions",
        {**body, "stream": True, "stream_options": {"include_usage": True}},
    )  # fmt: skip
    chunks = [json.loads(e) for e in streamed.sse()[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == plain
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("prompt", [None, [], [1, "a"], [[1], "a"], 5])
async def test_completions_reject_malformed_prompts(app: ModelServerApp, prompt: Any) -> None:
    result = await call(app, "POST", "/v1/completions", {"model": "m", "prompt": prompt})
    assert result.status == 400
    assert result.json()["error"]["param"] == "prompt"


# -- responses ------------------------------------------------------------------------------------


async def test_responses_with_message_list_input(app: ModelServerApp) -> None:
    body = {
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": "What is up?"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hm"}]},
        ],
    }
    doc = (await call(app, "POST", "/v1/responses", body)).json()
    assert doc["object"] == "response"
    assert doc["status"] == "completed"
    (item,) = doc["output"]
    assert (item["type"], item["role"]) == ("message", "assistant")
    text = item["content"][0]["text"]
    assert item["content"][0]["type"] == "output_text"
    expected_in = count_tokens("Be brief.") + count_tokens("What is up?") + count_tokens("Hm")
    assert doc["usage"]["input_tokens"] == expected_in
    assert doc["usage"]["output_tokens"] == count_tokens(text) == 16
    assert doc["usage"]["total_tokens"] == expected_in + 16


async def test_responses_stream_deltas_spell_the_text(app: ModelServerApp) -> None:
    body = {"model": "m", "input": "hello", "max_output_tokens": 5}
    plain = (await call(app, "POST", "/v1/responses", body)).json()
    assert plain["status"] == "incomplete"
    assert plain["incomplete_details"] == {"reason": "max_output_tokens"}
    events = [
        json.loads(e)
        for e in (await call(app, "POST", "/v1/responses", {**body, "stream": True})).sse()
    ]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.incomplete"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == plain["output"][0]["content"][0]["text"]
    assert events[-1]["response"]["usage"]["output_tokens"] == len(deltas) == 5


async def test_responses_without_limit_complete(app: ModelServerApp) -> None:
    body = {"model": "m", "input": "hello", "stream": True}
    events = [json.loads(e) for e in (await call(app, "POST", "/v1/responses", body)).sse()]
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["status"] == "completed"


# -- embeddings -----------------------------------------------------------------------------------


async def test_embeddings_float_and_base64_agree(app: ModelServerApp) -> None:
    body = {"model": "e", "input": ["a cat", "a dog"], "dimensions": 32}
    floats = (await call(app, "POST", "/v1/embeddings", body)).json()
    encoded = (
        await call(app, "POST", "/v1/embeddings", {**body, "encoding_format": "base64"})
    ).json()
    assert [d["index"] for d in floats["data"]] == [0, 1]
    for plain, packed in zip(floats["data"], encoded["data"], strict=True):
        assert len(plain["embedding"]) == 32
        assert from_base64(packed["embedding"]) == plain["embedding"]
    assert floats["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert floats["model"] == "e"


async def test_embeddings_default_dimensions_come_from_config() -> None:
    app = create_app(ModelServerConfig(embedding_dims=12))
    doc = (await call(app, "POST", "/v1/embeddings", {"model": "e", "input": [5, 6, 7]})).json()
    assert len(doc["data"][0]["embedding"]) == 12
    assert doc["usage"]["prompt_tokens"] == 3


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
async def test_embeddings_reject_bad_parameters(
    app: ModelServerApp, extra: dict[str, Any], param: str
) -> None:
    result = await call(app, "POST", "/v1/embeddings", {"model": "e", **extra})
    assert result.status == 400
    assert result.json()["error"]["param"] == param


# -- images, tokenize, models ---------------------------------------------------------------------


async def test_images_as_data_urls(app: ModelServerApp) -> None:
    body = {"prompt": "a lighthouse", "n": 3, "response_format": "url"}
    doc = (await call(app, "POST", "/v1/images/generations", body)).json()
    assert len(doc["data"]) == 3
    prefix = "data:image/png;base64,"
    images = [base64.b64decode(d["url"].removeprefix(prefix)) for d in doc["data"]]
    assert all(d["url"].startswith(prefix) for d in doc["data"])
    assert all(image.startswith(PNG_SIGNATURE) for image in images)
    assert len(set(images)) == 3
    assert doc["usage"]["output_tokens"] == 3 * IMAGE_OUTPUT_TOKENS


@pytest.mark.parametrize(
    "extra", [{"n": 0}, {"n": 11}, {"response_format": "jpeg"}, {"prompt": ""}]
)
async def test_images_reject_bad_parameters(app: ModelServerApp, extra: dict[str, Any]) -> None:
    result = await call(app, "POST", "/v1/images/generations", {"prompt": "p", **extra})
    assert result.status == 400


async def test_tokenize_text_uses_xai_shape(app: ModelServerApp) -> None:
    doc = (await call(app, "POST", "/v1/tokenize-text", {"model": "m", "text": "Hé, you"})).json()
    assert [t["string_token"] for t in doc["token_ids"]] == ["Hé", ",", " you"]
    assert doc["token_ids"][0]["token_bytes"] == list("Hé".encode())
    assert all(isinstance(t["token_id"], int) for t in doc["token_ids"])


async def test_models_list_and_retrieve(app: ModelServerApp) -> None:
    listed = (await call(app, "GET", "/v1/models")).json()
    assert listed["object"] == "list"
    names = [m["id"] for m in listed["data"]]
    assert names == app.config.models
    assert (await call(app, "GET", f"/v1/models/{names[0]}")).json()["id"] == names[0]
    missing = await call(app, "GET", "/v1/models/nope")
    assert missing.status == 404
    assert missing.json()["error"]["code"] == "model_not_found"


async def test_empty_model_list_answers_for_any_id() -> None:
    app = create_app(ModelServerConfig(models=[]))
    assert (await call(app, "GET", "/v1/models")).json()["data"] == []
    doc = (await call(app, "GET", "/v1/models/org/some-model")).json()
    assert doc["id"] == "org/some-model"


# -- errors, auth and knobs -----------------------------------------------------------------------


async def test_unknown_path_wrong_method_and_bad_json(app: ModelServerApp) -> None:
    unknown = await call(app, "GET", "/v2/nothing")
    assert unknown.status == 404
    assert unknown.json()["error"]["type"] == "invalid_request_error"
    wrong = await call(app, "GET", "/v1/chat/completions")
    assert wrong.status == 405
    assert wrong.headers["allow"] == "POST"
    bad = await call(app, "POST", "/v1/chat/completions", b"{not json")
    assert bad.status == 400
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"}


async def test_body_over_the_cap_is_413_after_reading_it() -> None:
    app = create_app(ModelServerConfig(max_body_bytes=100))
    result = await call(app, "POST", "/v1/embeddings", parts=[b"x" * 60, b"x" * 60])
    assert result.status == 413
    declared = await call(
        app, "POST", "/v1/embeddings", b"x", headers={"content-length": str(10**9)}
    )
    assert declared.status == 413
    assert declared.headers["connection"] == "close"


async def test_api_key_guards_v1_only() -> None:
    app = create_app(ModelServerConfig(api_key="upstream-secret"))
    assert (await call(app, "GET", "/v1/models")).status == 401
    body = {"model": "m", "input": "x"}
    denied = await call(app, "POST", "/v1/embeddings", body, headers={"authorization": "Bearer no"})
    assert denied.json()["error"]["code"] == "invalid_api_key"
    ok = {"authorization": "Bearer upstream-secret"}
    assert (await call(app, "POST", "/v1/embeddings", body, headers=ok)).status == 200
    assert (await call(app, "GET", "/health")).status == 200


@pytest.mark.parametrize(("status", "error_type"), [(429, "requests"), (503, "server_error")])
async def test_fail_status_header_injects_an_error(
    app: ModelServerApp, status: int, error_type: str
) -> None:
    headers = {"x-keyplane-fail-status": str(status)}
    result = await call(app, "POST", "/v1/chat/completions", {}, headers=headers)
    assert result.status == status
    assert result.json()["error"]["type"] == error_type


@pytest.mark.parametrize(
    "headers",
    [
        {"x-keyplane-latency-ms": "soon"},
        {"x-keyplane-token-latency-ms": "-1"},
        {"x-keyplane-fail-status": "200"},
    ],
)
async def test_malformed_knob_headers_are_a_400(
    app: ModelServerApp, headers: dict[str, str]
) -> None:
    body = {"model": "m", "messages": MESSAGES}
    assert (await call(app, "POST", "/v1/chat/completions", body, headers=headers)).status == 400


async def test_latency_header_delays_the_first_byte(app: ModelServerApp) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    body = {"model": "m", "messages": MESSAGES}
    await call(app, "POST", "/v1/chat/completions", body, headers={"x-keyplane-latency-ms": "50"})
    assert loop.time() - started >= 0.05


# -- disconnects and stats ------------------------------------------------------------------------


async def test_stream_stops_when_the_client_goes(app: ModelServerApp) -> None:
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 100_000, "stream": True}
    result = await call(app, "POST", "/v1/chat/completions", body, disconnect_after_chunks=3)
    # Generation stopped within a handful of tokens instead of running to 100 000.
    assert len(result.chunks) < 100
    assert not result.body.endswith(b"data: [DONE]\n\n")
    stats = json.loads((await call(app, "GET", "/_stats")).body)
    counts = {k: stats[k] for k in ("in_flight", "completed", "disconnected", "requests")}
    assert counts == {"in_flight": 0, "completed": 0, "disconnected": 1, "requests": 1}


async def test_paced_stream_stops_when_the_client_goes(app: ModelServerApp) -> None:
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 1000, "stream": True}
    headers = {"x-keyplane-token-latency-ms": "5"}
    result = await call(
        app, "POST", "/v1/chat/completions", body, headers=headers, disconnect_after_chunks=3
    )
    assert len(result.chunks) == 3
    assert app.stats.disconnected == 1


async def test_waiting_answer_is_abandoned_when_the_client_goes(app: ModelServerApp) -> None:
    body = {"model": "m", "messages": MESSAGES}
    headers = {"x-keyplane-latency-ms": "60000"}
    # Returns at once (call() would time out otherwise) without sending anything.
    result = await call(
        app, "POST", "/v1/chat/completions", body, headers=headers, disconnect_at_once=True
    )
    assert result.status == 0
    assert (app.stats.in_flight, app.stats.disconnected) == (0, 1)


async def test_stats_count_requests_and_can_be_reset(app: ModelServerApp) -> None:
    await call(app, "POST", "/v1/tokenize-text", {"text": "x"})
    await call(app, "GET", "/nope")
    answer = await call(app, "POST", "/v1/chat/completions", {"model": "m", "messages": MESSAGES})
    usage = answer.json()["usage"]
    stats = (await call(app, "GET", "/_stats")).json()
    assert stats == {
        "in_flight": 0,
        "completed": 2,
        "disconnected": 0,
        "requests": 3,
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
    }
    reset = (await call(app, "DELETE", "/_stats")).json()
    assert (reset["requests"], reset["prompt_tokens"], reset["completion_tokens"]) == (0, 0, 0)
    assert (await call(app, "POST", "/_stats")).status == 405


async def test_lifespan_is_acknowledged(app: ModelServerApp) -> None:
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_background_server_serves_over_real_http() -> None:
    with BackgroundModelServer(ModelServerConfig(models=["only"])) as server:
        response = httpx2.get(server.url + "/v1/models", timeout=5)
        assert [m["id"] for m in response.json()["data"]] == ["only"]
        assert server.app.stats.requests == 1
