"""``POST /v1/chat/completions`` and the legacy ``POST /v1/completions``, whole or streamed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import msgspec

from keyplane.modelserver import protocol
from keyplane.modelserver.http import Reply, decode, encode, require_model, split_inputs
from keyplane.modelserver.state import ServerState
from keyplane.modelserver.textgen import generate_tokens, seed_for
from keyplane.modelserver.tokenizer import count_tokens

__all__ = ["DONE", "chat_completions", "completions"]

DONE: Final = b"data: [DONE]\n\n"

_chat_decoder = msgspec.json.Decoder(protocol.ChatCompletionRequest)
_completion_decoder = msgspec.json.Decoder(protocol.CompletionRequest)

#: A stream's chunks of choices, given the bytes before and after a chunk's choices.
ChoiceChunks = Callable[[bytes, bytes], Iterator[tuple[bytes, bool]]]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _message_texts(content: str | list[protocol.ContentPart] | None) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    return [part.text for part in content if part.text is not None]


def chat_completions(state: ServerState, body: bytes) -> Reply:
    req = decode(body, _chat_decoder)
    require_model(req.model)
    if req.max_completion_tokens is not None:
        count, finish = state.output_length(req.max_completion_tokens, "max_completion_tokens")
    else:
        count, finish = state.output_length(req.max_tokens, "max_tokens")
    prompt_tokens = 0
    seed_parts: list[str] = []
    for message in req.messages:
        texts = _message_texts(message.content)
        prompt_tokens += sum(count_tokens(text) for text in texts)
        seed_parts.append(message.role + "\x1f" + "\x1f".join(texts))
    tokens = generate_tokens(
        seed_for(req.model, "\x1e".join(seed_parts)), count, finish=finish == "stop"
    )
    return _reply(
        state,
        req,
        kinds=("chat.completion", "chat.completion.chunk"),
        id_prefix="chatcmpl-",
        prompt_tokens=prompt_tokens,
        completion_tokens=len(tokens),
        choices=lambda: [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(tokens), "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        choice_chunks=lambda head, tail: _chat_chunks(head, tail, tokens, finish),
        extra={"system_fingerprint": None},
    )


def _chat_chunks(
    head: bytes, tail: bytes, tokens: list[str], finish: str
) -> Iterator[tuple[bytes, bool]]:
    yield (
        (
            head + b'{"index":0,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}' + tail
        ),
        False,
    )
    for token in tokens:
        yield (
            (
                head
                + b'{"index":0,"delta":{"content":'
                + encode(token)
                + b'},"logprobs":null,"finish_reason":null}'
                + tail
            ),
            True,
        )
    yield (
        (
            head
            + b'{"index":0,"delta":{},"logprobs":null,"finish_reason":"'
            + finish.encode()
            + b'"}'
            + tail
        ),
        False,
    )


def completions(state: ServerState, body: bytes) -> Reply:
    req = decode(body, _completion_decoder)
    require_model(req.model)
    count, finish = state.output_length(req.max_tokens, "max_tokens")
    prompts = split_inputs(req.prompt, "prompt")
    outputs: list[list[str]] = []
    prompt_tokens = 0
    for prompt in prompts:
        if isinstance(prompt, str):
            prompt_tokens += count_tokens(prompt)
            seed = seed_for(req.model, prompt)
        else:
            prompt_tokens += len(prompt)
            seed = seed_for(req.model, "\x00ids:" + ",".join(map(str, prompt)))
        outputs.append(generate_tokens(seed, count, finish=finish == "stop"))
    return _reply(
        state,
        req,
        kinds=("text_completion", "text_completion"),
        id_prefix="cmpl-",
        prompt_tokens=prompt_tokens,
        completion_tokens=sum(map(len, outputs)),
        choices=lambda: [
            {"text": "".join(out), "index": i, "logprobs": None, "finish_reason": finish}
            for i, out in enumerate(outputs)
        ],
        choice_chunks=lambda head, tail: _completion_chunks(head, tail, outputs, finish),
    )


def _completion_chunks(
    head: bytes, tail: bytes, outputs: list[list[str]], finish: str
) -> Iterator[tuple[bytes, bool]]:
    for index, tokens in enumerate(outputs):
        at = b',"index":' + str(index).encode() + b',"logprobs":null,"finish_reason":'
        for token in tokens:
            yield head + b'{"text":' + encode(token) + at + b"null}" + tail, True
        yield head + b'{"text":""' + at + b'"' + finish.encode() + b'"}' + tail, False


def _reply(
    state: ServerState,
    req: protocol.ChatCompletionRequest | protocol.CompletionRequest,
    *,
    kinds: tuple[str, str],
    id_prefix: str,
    prompt_tokens: int,
    completion_tokens: int,
    choices: Callable[[], list[dict[str, Any]]],
    choice_chunks: ChoiceChunks,
    extra: dict[str, Any] | None = None,
) -> Reply:
    """What chat and completions share once the tokens are generated: count them, then answer
    whole (``kinds[0]``, ``choices()``, then ``extra``) or as a stream of ``kinds[1]`` chunks."""
    usage = _usage(prompt_tokens, completion_tokens)
    state.count_tokens(prompt_tokens, completion_tokens)
    ident = state.new_id(id_prefix)
    created = int(time.time())
    whole, chunk = kinds
    if not req.stream:
        return Reply(body=encode({
            "id": ident,
            "object": whole,
            "created": created,
            "model": req.model,
            "choices": choices(),
            "usage": usage,
            **(extra or {}),
        }))  # fmt: skip
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    frame = _chunk_frame(ident, chunk, created, req.model, include_usage)
    return Reply(chunks=_stream(frame, choice_chunks, usage, include_usage))


def _stream(
    frame: tuple[bytes, bytes],
    choice_chunks: ChoiceChunks,
    usage: dict[str, int],
    include_usage: bool,
) -> Iterator[tuple[bytes, bool]]:
    head, tail = frame
    yield from choice_chunks(head, tail)
    if include_usage:
        yield head + b'],"usage":' + encode(usage) + b"}\n\n", False
    yield DONE, False


def _chunk_frame(
    ident: str, kind: str, created: int, model: str, include_usage: bool
) -> tuple[bytes, bytes]:
    """The bytes around a stream chunk's choices. Chunks are spliced from pre-encoded fragments:
    per token only the token is encoded."""
    head = (
        b'data: {"id":"'
        + ident.encode()
        + b'","object":"'
        + kind.encode()
        + b'","created":'
        + str(created).encode()
        + b',"model":'
        + encode(model)
        + b',"choices":['
    )
    # With include_usage OpenAI sends "usage": null on every chunk but the last.
    tail = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"
    return head, tail
