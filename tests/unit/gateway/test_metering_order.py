"""Usage metering in-process: every metered request is in the spool before its answer's last
bytes go out (docs/usage.md, "Delivery"), once, with the status the client got; a request cut
short is recorded as it ends. The gateway's ASGI app is called directly, with a ``send`` that
looks into the spool at each message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keyplane.asgi import Message
from keyplane.catalog import Catalog
from keyplane.gateway import Gateway, GatewayConfig, Inference, UpstreamError
from keyplane.ratelimit import MemoryLimiter
from keyplane.settings import Settings
from keyplane.usage.meter import Meter
from keyplane.usage.record import UsageRecord, decode, iter_frames
from keyplane.usage.spool import Spool
from tests.support.replica import one_key_replica
from tests.unit.gateway.test_inference_upstream import (
    MODEL,
    SECRET,
    Answer,
    FakeUpstream,
    _completion,
    _events,
)

_STREAM = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True}}
_USAGE = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}}
_CHUNK = {"choices": [{"delta": {"content": "a"}}]}


def _records(spool: Spool) -> list[UsageRecord]:
    batch = spool.read(spool.segment, 0, spool.size, 1 << 20)
    return [decode(payload) for _, _, payload in iter_frames(batch.data)]


async def _call(
    tmp_path: Path,
    method: str,
    path: str,
    body: object,
    answers: list[Answer],
    *,
    authorization: bytes = f"Bearer {SECRET}".encode(),
    reset: bool = False,
) -> tuple[list[UsageRecord], list[tuple[Message, int]]]:
    """The records spooled by one request, and each message it sent with how many records the
    spool held as it was sent."""
    gateway = Gateway(GatewayConfig(cluster="us-east-1"), one_key_replica(SECRET))
    catalog = Catalog(Settings())
    Inference(gateway, catalog, MemoryLimiter(), upstream=FakeUpstream(*answers))
    spool = Spool(tmp_path / "spool")
    gateway.meter = Meter(spool, catalog.models)
    incoming: list[Message] = [{"type": "http.request", "body": json.dumps(body).encode()}]
    sent: list[tuple[Message, int]] = []

    async def receive() -> Message:
        return incoming.pop() if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append((message, spool.appended))
        if reset:
            raise ConnectionResetError  # the client's connection is gone

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(b"authorization", authorization)],
    }
    await gateway(scope, receive, send)
    records = _records(spool)
    spool.close()
    return records, sent


_CASES = {
    "whole answer": ("POST", "/v1/chat/completions", {"model": MODEL}, [Answer([_completion(9)])]),
    "stream": (
        "POST",
        "/v1/chat/completions",
        _STREAM,
        [Answer(list(_events(_CHUNK, _USAGE)), stream=True)],
    ),
    "stream, end known": (
        "POST",
        "/v1/chat/completions",
        _STREAM,
        [Answer(list(_events(_CHUNK, _USAGE)), stream=True, end_known=True)],
    ),
    "upstream error answer": (
        "POST",
        "/v1/embeddings",
        {"model": MODEL},
        [Answer([b"{}"], status=500)],
    ),
    "upstream unreachable": (
        "POST",
        "/v1/embeddings",
        {"model": MODEL},
        [Answer([], fail=UpstreamError("ClientConnectorError"))],
    ),
    "unknown model": ("POST", "/v1/chat/completions", {"model": "no-such-model"}, []),
    "models list": ("GET", "/v1/models", None, []),
    "one model": ("GET", f"/v1/models/{MODEL}", None, []),
}


@pytest.mark.parametrize("case", list(_CASES))
async def test_a_request_is_recorded_once_before_its_last_bytes(tmp_path: Path, case: str) -> None:
    method, path, body, answers = _CASES[case]
    records, sent = await _call(tmp_path, method, path, body, answers)
    assert len(records) == 1
    start = sent[0][0]
    assert start["type"] == "http.response.start"
    assert records[0].status == start["status"]
    last = [n for message, n in sent if message["type"] == "http.response.body"][-1]
    assert last == 1  # in the spool as the last bytes were handed over
    assert sent[-1][0].get("more_body", False) is False
    if case.startswith("stream"):
        assert (records[0].prompt_tokens, records[0].completion_tokens) == (5, 7)
    if case == "whole answer":
        assert (records[0].prompt_tokens, records[0].completion_tokens) == (8, 1)


async def test_a_refused_key_is_recorded_with_its_status_before_the_refusal(
    tmp_path: Path,
) -> None:
    records, sent = await _call(
        tmp_path, "POST", "/v1/chat/completions", {"model": MODEL}, [], authorization=b"Bearer x"
    )
    assert [(r.status, r.team_id) for r in records] == [(sent[0][0]["status"], "")]
    assert sent[0][0]["status"] in (400, 401)
    assert [n for _, n in sent] == [1, 1]


async def test_a_stream_cut_short_is_recorded_once_as_it_ends(tmp_path: Path) -> None:
    events = list(_events(_CHUNK, _CHUNK))
    answer = Answer(events, stream=True, fail_after=1)
    records, sent = await _call(tmp_path, "POST", "/v1/chat/completions", _STREAM, [answer])
    assert [n for _, n in sent] == [0, 0]  # the head and one event: no end went out
    assert len(records) == 1
    assert records[0].status == 200
    assert records[0].completion_tokens == 1  # what the client received


async def test_a_client_gone_before_its_answer_is_recorded_once_as_499(tmp_path: Path) -> None:
    answers = [Answer([_completion(9)])]
    body = {"model": MODEL}
    records, sent = await _call(tmp_path, "POST", "/v1/chat/completions", body, answers, reset=True)
    assert [m["type"] for m, _ in sent] == ["http.response.start"]
    assert [(r.status, r.api_key_id != "") for r in records] == [(499, True)]
