"""``POST /v1/images/generations``: real 64×64 PNGs, as ``b64_json`` or a ``data:`` URL."""

from __future__ import annotations

import base64
import time
from typing import Final

import msgspec

from keyplane.modelserver import protocol
from keyplane.modelserver.http import HTTPError, Reply, decode, encode, one_of, within
from keyplane.modelserver.png import IMAGE_SIZE, image_for_prompt
from keyplane.modelserver.state import ServerState
from keyplane.modelserver.tokenizer import count_tokens

__all__ = ["IMAGE_OUTPUT_TOKENS", "MAX_IMAGES", "images"]

MAX_IMAGES: Final = 10
IMAGE_OUTPUT_TOKENS: Final = (IMAGE_SIZE // 16) ** 2
"""Images report one output token per 16×16 tile, a fixed and predictable count per image."""

_decoder = msgspec.json.Decoder(protocol.ImageGenerationRequest)


def images(state: ServerState, body: bytes) -> Reply:
    req = decode(body, _decoder)
    if not req.prompt:
        raise HTTPError(400, "Invalid 'prompt': must not be empty.", param="prompt")
    n = within(1 if req.n is None else req.n, MAX_IMAGES, "n")
    fmt = one_of(req.response_format or "b64_json", ("b64_json", "url"), "response_format")
    data: list[dict[str, str]] = []
    for index in range(n):
        encoded = base64.b64encode(image_for_prompt(req.prompt, index)).decode("ascii")
        if fmt == "url":
            data.append({"url": "data:image/png;base64," + encoded})
        else:
            data.append({"b64_json": encoded})
    input_tokens = count_tokens(req.prompt)
    output_tokens = n * IMAGE_OUTPUT_TOKENS
    state.count_tokens(input_tokens, output_tokens)
    return Reply(body=encode({
        "created": int(time.time()),
        "data": data,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"text_tokens": input_tokens, "image_tokens": 0},
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        },
    }))  # fmt: skip
