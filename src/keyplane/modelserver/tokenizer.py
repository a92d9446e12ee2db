"""The built-in model server's one tokenizer, shared by every count it reports.

Prompt counting, completion counting, streaming (one chunk per token) and ``/v1/tokenize-text``
all go through :func:`tokenize`, so the usage a client is billed for always equals what it can
count itself. The split is GPT-style: a word or a run of up to three digits or one punctuation
character, each optionally carrying the single space before it, and whitespace runs on their own.
Tokenization is lossless: ``"".join(tokenize(text)) == text`` for every string.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Final

# Alternatives, in order: letters (any script), digits in groups of at most three, one character
# that is neither word nor space (underscore counts as punctuation here), whitespace ending in
# line breaks, a whitespace run that leaves its last space for the next token, and any remaining
# whitespace. Every character falls into one of them, which is what makes the split lossless.
_TOKEN_RE: Final = re.compile(r" ?[^\W\d_]+| ?\d{1,3}| ?(?:[^\w\s]|_)|\s*[\r\n]+|\s+(?!\S)|\s+")

VOCAB_SIZE: Final = 1 << 17
"""Token ids fall in ``range(VOCAB_SIZE)``; different pieces may share an id, as hashes do."""


def tokenize(text: str) -> list[str]:
    """Split ``text`` into token strings whose concatenation is ``text``."""
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    """How many tokens :func:`tokenize` would return, for usage accounting."""
    if not text:
        return 0
    return len(_TOKEN_RE.findall(text))


@lru_cache(maxsize=65536)
def token_id(piece: str) -> int:
    """A stable id for a token string: the same on every run, platform and Python version."""
    # blake2b rather than hash(): str hashes are salted per process, and ids must be reproducible.
    digest = hashlib.blake2b(piece.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % VOCAB_SIZE


def token_ids(text: str) -> list[int]:
    """The ids of ``text``'s tokens, in order."""
    return [token_id(piece) for piece in tokenize(text)]
