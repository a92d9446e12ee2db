"""``POST /v1/responses``: a minimal Responses API, whole or streamed as Responses events."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import msgspec

from keyplane.modelserver import protocol
from keyplane.modelserver.http import HTTPError, Reply, decode, encode, require_model
from keyplane.modelserver.state import ServerState
from keyplane.modelserver.textgen import generate_tokens, seed_for
from keyplane.modelserver.tokenizer import count_tokens

__all__ = ["responses"]

_decoder = msgspec.json.Decoder(protocol.ResponsesRequest)


def _item_texts(item: Any) -> list[str]:
    """Texts of one Responses API input item: a message with string or part-list content."""
    if isinstance(item, str):
        return [item]
    if not isinstance(item, dict):
        raise HTTPError(400, "Invalid 'input': items must be objects.", param="input")
    texts: list[str] = []
    content = item.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        texts.extend(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    # Tool results carry their text in "output".
    if isinstance(item.get("output"), str):
        texts.append(item["output"])
    return texts


def responses(state: ServerState, body: bytes) -> Reply:
    req = decode(body, _decoder)
    require_model(req.model)
    count, finish = state.output_length(req.max_output_tokens, "max_output_tokens")
    if isinstance(req.input, str):
        texts = [req.input]
    elif isinstance(req.input, list):
        texts = [text for item in req.input for text in _item_texts(item)]
    else:
        raise HTTPError(
            400, "Invalid 'input': expected a string or a list of items.", param="input"
        )
    if req.instructions:
        texts.insert(0, req.instructions)
    input_tokens = sum(count_tokens(text) for text in texts)
    tokens = generate_tokens(
        seed_for(req.model, "\x1e".join(texts)), count, finish=finish == "stop"
    )
    text = "".join(tokens)
    state.count_tokens(input_tokens, len(tokens))
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": len(tokens),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + len(tokens),
    }
    ident = state.new_id("resp_")
    message_id = state.new_id("msg_")
    complete = finish == "stop"
    part = {"type": "output_text", "text": text, "annotations": []}
    item = {
        "id": message_id, "type": "message", "status": "completed" if complete else
        "incomplete", "role": "assistant", "content": [part],
    }  # fmt: skip
    # A response cut short by max_output_tokens is "incomplete", as OpenAI reports it.
    response: dict[str, Any] = {
        "id": ident,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed" if complete else "incomplete",
        "incomplete_details": None if complete else {"reason": "max_output_tokens"},
        "error": None,
        "model": req.model,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "output": [item],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }
    if not req.stream:
        return Reply(body=encode(response))
    return Reply(chunks=_response_events(response, item, tokens))


def _response_events(
    response: dict[str, Any], item: dict[str, Any], tokens: list[str]
) -> Iterator[tuple[bytes, bool]]:
    """The Responses API's streaming events for ``response``, one text delta per token."""
    sequence = itertools.count()

    def event(kind: str, payload: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": next(sequence), **payload}
        return b"event: " + kind.encode() + b"\ndata: " + encode(data) + b"\n\n"

    pending = {
        **response,
        "status": "in_progress",
        "incomplete_details": None,
        "output": [],
        "usage": None,
    }
    part = item["content"][0]
    where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
    yield event("response.created", {"response": pending}), False
    yield event("response.in_progress", {"response": pending}), False
    yield event("response.output_item.added", {
        "output_index": 0, "item": {**item, "status": "in_progress", "content": []},
    }), False  # fmt: skip
    yield event("response.content_part.added", {**where, "part": {**part, "text": ""}}), False
    for token in tokens:
        yield event("response.output_text.delta", {**where, "delta": token, "logprobs": []}), True
    yield event("response.output_text.done", {**where, "text": part["text"], "logprobs": []}), False
    yield event("response.content_part.done", {**where, "part": part}), False
    yield event("response.output_item.done", {"output_index": 0, "item": item}), False
    final = "response.completed" if response["status"] == "completed" else "response.incomplete"
    yield event(final, {"response": response}), False
