"""``POST /v1/tokenize-text``, in xAI's shape."""

from __future__ import annotations

import msgspec

from keyplane.modelserver import protocol
from keyplane.modelserver.http import Reply, decode, encode
from keyplane.modelserver.state import ServerState
from keyplane.modelserver.tokenizer import token_id, tokenize

__all__ = ["tokenize_text"]

_decoder = msgspec.json.Decoder(protocol.TokenizeTextRequest)


def tokenize_text(state: ServerState, body: bytes) -> Reply:
    req = decode(body, _decoder)
    return Reply(body=encode({
        "token_ids": [
            {
                "token_id": token_id(piece),
                "string_token": piece,
                "token_bytes": list(piece.encode("utf-8", "surrogatepass")),
            }
            for piece in tokenize(req.text)
        ]
    }))  # fmt: skip
