"""``POST /v1/embeddings``: deterministic vectors, ``float`` or ``base64``, any ``dimensions``."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from keyplane.modelserver import protocol
from keyplane.modelserver.embeddings import MAX_DIMENSIONS, embed, embed_token_ids, to_base64
from keyplane.modelserver.http import (
    HTTPError,
    Reply,
    decode,
    encode,
    one_of,
    require_model,
    split_inputs,
    within,
)
from keyplane.modelserver.state import ServerState
from keyplane.modelserver.tokenizer import count_tokens

__all__ = ["MAX_EMBEDDING_INPUTS", "embeddings"]

MAX_EMBEDDING_INPUTS: Final = 2048

_decoder = msgspec.json.Decoder(protocol.EmbeddingRequest)


def embeddings(state: ServerState, body: bytes) -> Reply:
    req = decode(body, _decoder)
    require_model(req.model)
    inputs = split_inputs(req.input, "input")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise HTTPError(
            400, f"'$.input' must have at most {MAX_EMBEDDING_INPUTS} items.", param="input"
        )
    dims = state.config.embedding_dims if req.dimensions is None else req.dimensions
    within(dims, MAX_DIMENSIONS, "dimensions")
    fmt = one_of(req.encoding_format or "float", ("float", "base64"), "encoding_format")
    data: list[dict[str, Any]] = []
    prompt_tokens = 0
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            if not item:
                raise HTTPError(
                    400, "'$.input' is invalid: inputs must not be empty.", param="input"
                )
            prompt_tokens += count_tokens(item)
            vector = embed(req.model, item, dims)
        else:
            prompt_tokens += len(item)
            vector = embed_token_ids(req.model, item, dims)
        data.append({
            "object": "embedding",
            "index": index,
            "embedding": to_base64(vector) if fmt == "base64" else vector,
        })  # fmt: skip
    state.count_tokens(prompt_tokens, 0)
    return Reply(body=encode({
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))  # fmt: skip
