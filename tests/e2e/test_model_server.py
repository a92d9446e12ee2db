"""The built-in model server as a real process, spoken to over HTTP by the official openai client
and by raw httpx2: what a gateway or benchmark in front of it will see.
"""

from __future__ import annotations

import base64
import math
import selectors
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

MODELS = ["keyplane-mini", "keyplane-embed"]
SYSTEM = "You answer in pseudo-words."
QUESTION = "Tell me, briefly: what is a gateway?"
PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": QUESTION},
]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[str]
    log: Path


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    """The process's first stdout line, or fail once ``deadline`` (monotonic) passes."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=max(deadline - time.monotonic(), 0)):
                return proc.stdout.readline()
    pytest.fail("model server printed nothing before the deadline")


def _wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("models") / "stderr.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "keyplane.modelserver", "--host", "127.0.0.1", "--port", "0",
                "--latency-ms", "0", "--token-latency-ms", "0", "--models", ",".join(MODELS),
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )  # fmt: skip
    try:
        line = _read_line(proc, time.monotonic() + 15)
        prefix = "keyplane models listening on "
        assert line.startswith(prefix), (line, log.read_text())
        url = line.removeprefix(prefix).strip()
        assert url.startswith("http://127.0.0.1:")
        assert not url.endswith(":0")

        def accepts() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx2.get(url + "/health", timeout=1).status_code == 200
            except httpx2.TransportError:
                return False

        _wait_until(accepts, 15, "the model server to accept connections")
        yield Server(url, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    # A clean SIGTERM shutdown (uvicorn re-raises the signal once it has shut down gracefully),
    # and nothing worth a warning in the log.
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()
    assert log.read_text() == ""


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=server.url, timeout=10) as c:
        yield c


def count_tokens(http: httpx2.Client, text: str) -> int:
    response = http.post("/v1/tokenize-text", json={"model": "keyplane-mini", "text": text})
    return len(response.json()["token_ids"])


def stats(http: httpx2.Client) -> dict[str, int]:
    result: dict[str, int] = http.get("/_stats").json()
    return result


def decode_png(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, after checking signature, every CRC and that IDAT inflates."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos = 8
    chunks: dict[bytes, bytes] = {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(
            kind + body
        )
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    assert chunks[b"IHDR"][8:10] == b"\x08\x02"  # 8-bit RGB
    assert len(zlib.decompress(chunks[b"IDAT"])) == height * (1 + 3 * width)
    assert b"IEND" in chunks
    return width, height


# -- chat through the openai client ---------------------------------------------------------------


def test_chat_plain(client: openai.OpenAI, http: httpx2.Client) -> None:
    completion = client.chat.completions.create(model="keyplane-mini", messages=PROMPT)
    assert completion.model == "keyplane-mini"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    content = choice.message.content
    assert content
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == count_tokens(http, SYSTEM) + count_tokens(
        http, QUESTION
    )
    assert completion.usage.completion_tokens == count_tokens(http, content) == 16
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    again = client.chat.completions.create(model="keyplane-mini", messages=PROMPT)
    assert again.choices[0].message.content == content
    assert again.id != completion.id


@pytest.mark.parametrize("max_tokens", [None, 1, 33])
def test_chat_stream_matches_plain_and_counts_chunks(
    client: openai.OpenAI, max_tokens: int | None
) -> None:
    limit: dict[str, Any] = {} if max_tokens is None else {"max_tokens": max_tokens}
    plain = client.chat.completions.create(model="keyplane-mini", messages=PROMPT, **limit)
    chunks = list(
        client.chat.completions.create(
            model="keyplane-mini",
            messages=PROMPT,
            stream=True,
            stream_options={"include_usage": True},
            **limit,
        )
    )
    contents = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(contents) == plain.choices[0].message.content
    assert plain.usage is not None
    # The usage chunk comes last, alone, with no choices.
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert usage_chunks == [chunks[-1]]
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == len(contents) == plain.usage.completion_tokens
    assert usage.prompt_tokens == plain.usage.prompt_tokens
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [plain.choices[0].finish_reason]
    assert finishes == ["stop" if max_tokens is None else "length"]
    if max_tokens is not None:
        assert len(contents) == max_tokens


def test_chat_stream_without_include_usage_has_no_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model="keyplane-mini", messages=PROMPT, stream=True)
    )
    assert chunks
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_responses_and_legacy_completions(client: openai.OpenAI) -> None:
    response = client.responses.create(model="keyplane-mini", input="What is a gateway?")
    assert response.status == "completed"
    assert response.output_text
    assert response.usage is not None
    assert response.usage.output_tokens == 16
    events = list(
        client.responses.create(model="keyplane-mini", input="What is a gateway?", stream=True)
    )
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == response.output_text
    assert events[-1].type == "response.completed"

    legacy = client.completions.create(model="keyplane-mini", prompt="Once upon", max_tokens=5)
    assert legacy.usage is not None
    assert legacy.usage.completion_tokens == 5
    streamed = client.completions.create(
        model="keyplane-mini", prompt="Once upon", max_tokens=5, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == legacy.choices[0].text


# -- embeddings and images ------------------------------------------------------------------------


def test_embeddings_float_and_base64(client: openai.OpenAI, http: httpx2.Client) -> None:
    inputs = ["the quick brown fox", "jumps over"]
    as_float = client.embeddings.create(
        model="keyplane-embed", input=inputs, encoding_format="float"
    )
    vectors = [d.embedding for d in as_float.data]
    assert [len(v) for v in vectors] == [256, 256]
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-5) for v in vectors)
    assert vectors[0] != vectors[1]
    assert as_float.usage.prompt_tokens == sum(count_tokens(http, text) for text in inputs)
    # The client's default asks for base64 and decodes it: the same numbers must come out.
    decoded = client.embeddings.create(model="keyplane-embed", input=inputs)
    assert [d.embedding for d in decoded.data] == vectors
    # And the raw base64 is little-endian float32, dimensions honoured.
    raw = http.post(
        "/v1/embeddings",
        json={"model": "keyplane-embed", "input": inputs[0], "encoding_format": "base64",
              "dimensions": 8},
    ).json()  # fmt: skip
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert len(packed) == 8 * 4
    small = struct.unpack("<8f", packed)
    assert math.isclose(sum(x * x for x in small), 1.0, rel_tol=1e-5)


def test_images_are_real_pngs(client: openai.OpenAI) -> None:
    result = client.images.generate(
        model="keyplane-image", prompt="a lighthouse at dusk", n=2, response_format="b64_json"
    )
    assert result.data is not None
    images = [base64.b64decode(d.b64_json or "") for d in result.data]
    assert [decode_png(image) for image in images] == [(64, 64), (64, 64)]
    assert images[0] != images[1]
    as_url = client.images.generate(prompt="a lighthouse at dusk", response_format="url")
    assert as_url.data is not None
    url = as_url.data[0].url or ""
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == images[0]


# -- raw HTTP: tokenize, models, errors, knobs ----------------------------------------------------


def test_tokenize_text(http: httpx2.Client) -> None:
    text = "Hello, wörld!  42"
    tokens = http.post("/v1/tokenize-text", json={"model": "keyplane-mini", "text": text}).json()
    pieces = tokens["token_ids"]
    assert "".join(p["string_token"] for p in pieces) == text
    assert all(bytes(p["token_bytes"]) == p["string_token"].encode() for p in pieces)
    assert all(isinstance(p["token_id"], int) for p in pieces)


def test_models(http: httpx2.Client) -> None:
    listed = http.get("/v1/models").json()
    assert [m["id"] for m in listed["data"]] == MODELS
    assert http.get("/v1/models/keyplane-embed").json()["object"] == "model"
    assert http.get("/v1/models/gpt-4o").status_code == 404


def test_errors_in_openai_shape(http: httpx2.Client) -> None:
    missing = http.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    wrong_method = http.get("/v1/chat/completions")
    assert wrong_method.status_code == 405
    malformed = http.post(
        "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400
    assert set(malformed.json()["error"]) == {"message", "type", "param", "code"}
    too_big = http.post("/v1/embeddings", content=b"x" * (5 * 1024 * 1024))
    assert too_big.status_code == 413
    # The connection survives the 413.
    assert http.get("/v1/models").status_code == 200
    failed = http.post("/v1/embeddings", json={}, headers={"x-keyplane-fail-status": "500"})
    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "server_error"


def test_latency_header(http: httpx2.Client) -> None:
    started = time.monotonic()
    response = http.post(
        "/v1/embeddings",
        json={"model": "keyplane-embed", "input": "x"},
        headers={"x-keyplane-latency-ms": "150"},
    )
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.15


def test_mid_stream_disconnect_frees_the_stream(server: Server, http: httpx2.Client) -> None:
    before = stats(http)
    body = {"model": "keyplane-mini", "messages": PROMPT, "stream": True, "max_tokens": 100_000}
    # Its own client, so closing the response closes its connection.
    with (
        httpx2.Client(base_url=server.url, timeout=10) as streaming,
        streaming.stream(
            "POST",
            "/v1/chat/completions",
            json=body,
            headers={"x-keyplane-token-latency-ms": "10"},
        ) as response,
    ):
        assert response.status_code == 200
        data_lines = 0
        for line in response.iter_lines():
            data_lines += line.startswith("data: ")
            if data_lines == 3:
                assert stats(http)["in_flight"] == 1
                # Leaving the loop early closes the response, and with it the connection.
                break

    def freed() -> bool:
        now = stats(http)
        return now["in_flight"] == 0 and now["disconnected"] == before["disconnected"] + 1

    _wait_until(freed, 5, "the server to notice the disconnect")
    assert stats(http)["completed"] == before["completed"]
