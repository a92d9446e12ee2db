"""Request bodies the built-in model server accepts, as msgspec structs.

Only the fields the server acts on are declared; unknown fields are ignored, as an OpenAI-compatible
upstream must tolerate parameters it does not implement (``temperature``, ``tools``, ...).
Decoding straight into these structs validates types in C and yields OpenAI-style error locations
(``$.max_tokens``) for free.
"""

from __future__ import annotations

from typing import Any

import msgspec


class ContentPart(msgspec.Struct):
    """One part of a multi-part message content; only text parts count towards tokens."""

    type: str = "text"
    text: str | None = None


class ChatMessage(msgspec.Struct):
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class ChatCompletionRequest(msgspec.Struct):
    model: str
    messages: list[ChatMessage]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None  # accepted and ignored: there is always exactly one choice


class CompletionRequest(msgspec.Struct):
    model: str
    # A string, a list of strings, a list of token ids, or a list of lists of token ids.
    prompt: Any = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None


class ResponsesRequest(msgspec.Struct):
    model: str
    # A string, or a list of input items (messages with string or part-list content).
    input: Any = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    stream: bool | None = None


class EmbeddingRequest(msgspec.Struct):
    model: str
    # A string, a list of strings, a list of token ids, or a list of lists of token ids.
    input: Any
    dimensions: int | None = None
    encoding_format: str | None = None


class ImageGenerationRequest(msgspec.Struct):
    prompt: str
    model: str | None = None
    n: int | None = None
    response_format: str | None = None
    size: str | None = None


class TokenizeTextRequest(msgspec.Struct):
    text: str
    model: str | None = None
