"""The gateway's inference path in-process, driven through its ``Upstream`` seam by a fake upstream:
what goes upstream, what comes back to the client, and what is charged, with no socket at all.
(The e2e suites prove the same against the real model server, across processes.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx2
import pytest

from keyplane.asgi import Message
from keyplane.catalog import Catalog
from keyplane.domain import keysecrets
from keyplane.gateway import Gateway, GatewayConfig, Inference, UpstreamError, UpstreamResponse
from keyplane.ratelimit import MemoryLimiter
from keyplane.settings import Settings
from tests.support.replica import one_key_replica

CLUSTER = "us-east-1"
MODEL = "grok-3-mini"
SECRET = keysecrets.generate_secret("xai-")


@dataclass
class Answer:
    """What the fake upstream answers one request with."""

    chunks: list[bytes]
    status: int = 200
    stream: bool = False
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: Raised on entering the exchange (before any answer).
    fail: Exception | None = None
    #: Raised after this many chunks (mid-answer).
    fail_after: int | None = None
    #: The response says when its last chunk has been read (``H1Upstream`` does).
    end_known: bool = False


class FakeResponse:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.status = answer.status
        self.is_stream = answer.stream
        self._served = 0

    @property
    def ended(self) -> bool:
        return self.answer.end_known and self._served == len(self.answer.chunks)

    def header_items(self) -> Iterable[tuple[str, str]]:
        content_type = "text/event-stream" if self.is_stream else "application/json"
        return [("Content-Type", content_type), ("Content-Length", "1"), *self.answer.headers]

    async def read(self) -> bytes:
        return b"".join(self.answer.chunks)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        for index, chunk in enumerate(self.answer.chunks):
            if index == self.answer.fail_after:
                raise UpstreamError("ServerDisconnectedError")
            self._served += 1
            yield chunk


@dataclass
class Sent:
    url: str
    body: dict[str, object]
    headers: dict[str, str]


class FakeUpstream:
    """An ``Upstream`` answering from a script, recording what it was sent."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.sent: list[Sent] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    @asynccontextmanager
    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> AsyncIterator[UpstreamResponse]:
        self.sent.append(Sent(url, json.loads(body), dict(headers)))
        answer = self.answers.pop(0)
        if answer.fail is not None:
            raise answer.fail
        yield FakeResponse(answer)


@dataclass
class Stack:
    client: httpx2.AsyncClient
    upstream: FakeUpstream


def _gateway(tpm: int | None) -> Gateway:
    return Gateway(GatewayConfig(cluster=CLUSTER), one_key_replica(SECRET, tpm=tpm))


@asynccontextmanager
async def stack(*answers: Answer, tpm: int | None = None) -> AsyncIterator[Stack]:
    gateway = _gateway(tpm)
    upstream = FakeUpstream(*answers)
    inference = Inference(gateway, Catalog(Settings()), MemoryLimiter(), upstream=upstream)
    await inference.start()
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=gateway),
        base_url="http://gateway",
        headers={"Authorization": f"Bearer {SECRET}"},
    ) as client:
        yield Stack(client, upstream)
    await inference.close()


def _completion(total: int) -> bytes:
    usage = {"prompt_tokens": total - 1, "completion_tokens": 1, "total_tokens": total}
    return json.dumps({"id": "c1", "choices": [], "usage": usage}).encode()


def _events(*payloads: Mapping[str, object]) -> Iterator[bytes]:
    for payload in payloads:
        yield b"data: " + json.dumps(payload).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


async def test_a_whole_answer_is_relayed_and_its_tokens_charged() -> None:
    answers = [Answer([_completion(60)], headers=[("x-upstream", "yes"), ("Server", "x")])] * 3
    async with stack(*answers, tpm=100) as s:
        body = {"model": MODEL, "messages": [], "max_tokens": 3}
        first = await s.client.post(
            "/v1/chat/completions", json=body, headers={"x-request-id": "r1", "cookie": "c"}
        )
        assert first.status_code == 200
        assert first.json()["usage"]["total_tokens"] == 60
        assert first.headers["x-upstream"] == "yes"
        assert "server" not in first.headers  # hop-by-hop and the upstream's identity dropped
        assert first.headers["content-length"] == str(len(first.content))
        assert first.headers["x-ratelimit-limit-tokens"] == "100"
        sent = s.upstream.sent[0]
        assert sent.url.endswith("/v1/chat/completions")
        assert sent.body == body
        assert sent.headers["x-request-id"] == "r1"
        assert "cookie" not in sent.headers
        assert "authorization" not in sent.headers
        # 60 charged: a second request still fits in 100, and then the window holds 120.
        assert (await s.client.post("/v1/chat/completions", json=body)).status_code == 200
        refused = await s.client.post("/v1/chat/completions", json=body)
        assert refused.status_code == 429
        assert refused.json()["code"] == "resource-exhausted"
        assert len(s.upstream.sent) == 2


async def test_a_stream_is_asked_for_usage_and_the_client_does_not_see_it() -> None:
    chunk = {"choices": [{"delta": {"content": "hi"}}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 95}}
    events = list(_events(chunk, usage))
    # The events arrive split anywhere: the relay forwards whole events only.
    raw = b"".join(events)
    pieces = [raw[:7], raw[7:60], raw[60:]]
    answers = [Answer(pieces, stream=True), Answer([_completion(1)])]
    async with stack(*answers, tpm=99) as s:
        body = {"model": MODEL, "messages": [], "stream": True}
        response = await s.client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200
        assert response.content == events[0] + events[2]
        assert s.upstream.sent[0].body == {**body, "stream_options": {"include_usage": True}}
        # 100 tokens charged against 99: the next request is refused.
        assert (await s.client.post("/v1/chat/completions", json=body)).status_code == 429


async def test_a_stream_that_asked_for_usage_keeps_it() -> None:
    usage = {"choices": [], "usage": {"total_tokens": 3}}
    events = list(_events(usage))
    async with stack(Answer(events, stream=True)) as s:
        body = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True}}
        response = await s.client.post("/v1/chat/completions", json=body)
        assert response.content == b"".join(events)
        assert s.upstream.sent[0].body == body


@pytest.mark.parametrize(
    ("failure", "status"),
    [(UpstreamError("ClientConnectorError"), 502), (TimeoutError(), 504)],
)
async def test_an_upstream_that_fails_before_answering_is_a_gateway_error(
    failure: Exception, status: int
) -> None:
    async with stack(Answer([], fail=failure)) as s:
        response = await s.client.post("/v1/embeddings", json={"model": MODEL, "input": "x"})
        assert response.status_code == status
        assert response.json()["code"] == "unavailable"


async def test_an_upstream_that_breaks_off_mid_stream_leaves_a_truncated_stream() -> None:
    """The answer never ends: the server closes the connection on the client (an ASGI test
    client refuses that, so the app is called directly)."""
    events = list(_events({"choices": [{"delta": {"content": "a"}}]}))
    gateway = _gateway(None)
    upstream = FakeUpstream(Answer(events, stream=True, fail_after=1))
    Inference(gateway, Catalog(Settings()), MemoryLimiter(), upstream=upstream)
    body = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True}}
    incoming: list[Message] = [{"type": "http.request", "body": json.dumps(body).encode()}]
    finished = asyncio.Event()
    sent: list[Message] = []

    async def receive() -> Message:
        if incoming:
            return incoming.pop()
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"authorization", f"Bearer {SECRET}".encode())],
    }
    await gateway(scope, receive, send)
    finished.set()
    assert sent[0]["status"] == 200
    assert [m["body"] for m in sent[1:]] == [events[0]]
    assert all(m.get("more_body") for m in sent[1:])


async def test_refusals_never_reach_the_upstream() -> None:
    async with stack() as s:
        unknown = await s.client.post("/v1/chat/completions", json={"model": "no-such-model"})
        assert unknown.status_code == 404
        assert (await s.client.post("/v1/chat/completions", content=b"{")).status_code == 400
        assert s.upstream.sent == []
