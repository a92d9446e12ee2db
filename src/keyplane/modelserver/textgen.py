"""Deterministic pseudo-text: the "model output" of the built-in model server.

Output is a function of ``(model, prompt)`` only, so the same request always gets the same text,
streamed or not. It is produced token by token, and every piece produced is exactly one token
under :mod:`keyplane.modelserver.tokenizer` (a capitalised or lower-case word with at most one
leading space, or a single punctuation mark), so re-tokenizing the text gives back the very same
pieces and ``completion_tokens`` is exact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from functools import lru_cache
from itertools import islice
from typing import Final

_ONSETS: Final = (
    "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
    "br", "ch", "cr", "dr", "pl", "sh", "st", "th", "tr",
)  # fmt: skip
_VOWELS: Final = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ea", "ou", "io")
_CODAS: Final = ("", "", "", "", "n", "r", "s", "l", "m", "nt", "st")

_MASK64: Final = (1 << 64) - 1


class _SplitMix64:
    """A tiny, fast, fully specified PRNG.

    ``random.Random`` would do, but its algorithms for ``choice``/``randrange`` are not promised to
    stay the same across Python versions; this keeps recorded outputs valid forever.
    """

    __slots__ = ("_state",)

    def __init__(self, seed: int) -> None:
        self._state = seed & _MASK64

    def next(self) -> int:
        self._state = (self._state + 0x9E3779B97F4A7C15) & _MASK64
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        # Modulo bias is irrelevant at these sizes; speed and determinism are what count.
        return self.next() % n

    def pick(self, options: tuple[str, ...]) -> str:
        return options[self.next() % len(options)]


def seed_for(model: str, prompt: str) -> int:
    """The generator seed for a request: a stable hash of the model and the prompt text."""
    material = model.encode("utf-8") + b"\x00" + prompt.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "little")


def _word(rng: _SplitMix64) -> str:
    syllables = 1 + rng.below(3)
    return "".join(
        rng.pick(_ONSETS) + rng.pick(_VOWELS) + rng.pick(_CODAS) for _ in range(syllables)
    )


def _lexicon(size: int) -> tuple[str, ...]:
    rng = _SplitMix64(0x6B6579706C616E65)  # fixed: the vocabulary is part of the output format
    return tuple(_word(rng) for _ in range(size))


_LEXICON_BITS: Final = 12
# Words are drawn from a fixed pseudo-word list, in each of the four forms a token can take, so a
# token costs one PRNG step and a tuple lookup: this sits on every benchmarked request's path.
_LOWER: Final = _lexicon(1 << _LEXICON_BITS)
_CAPITAL: Final = tuple(word.capitalize() for word in _LOWER)
_SPACED_LOWER: Final = tuple(" " + word for word in _LOWER)
_SPACED_CAPITAL: Final = tuple(" " + word for word in _CAPITAL)
_WORD_MASK: Final = (1 << _LEXICON_BITS) - 1


def _stream(rng: _SplitMix64) -> Iterator[str]:
    """An endless run of tokens forming sentences of 4–12 words with the odd comma."""
    first = True
    while True:
        words = 4 + rng.below(9)
        for i in range(words):
            z = rng.next()
            if i == 0:
                yield _CAPITAL[z & _WORD_MASK] if first else _SPACED_CAPITAL[z & _WORD_MASK]
                first = False
            else:
                yield _SPACED_LOWER[z & _WORD_MASK]
            # A comma now and then (1 in 8, from bits the word did not use), never right after
            # the first word nor before the full stop.
            if 1 <= i < words - 2 and (z >> 32) & 7 == 0:
                yield ","
        yield "."


def generate_tokens(seed: int, count: int, *, finish: bool = False) -> list[str]:
    """``count`` output tokens for ``seed``.

    Without ``finish`` the result is a prefix of one endless stream, so a longer ``max_tokens``
    extends a shorter one's text. With ``finish`` the text ends with a full stop, the way a model
    that stopped by itself would ("stop" rather than "length").
    """
    if count <= _CACHED_UP_TO:
        return list(_cached(seed, count, finish))
    return _generate(seed, count, finish)


_CACHED_UP_TO: Final = 512


@lru_cache(maxsize=4096)
def _cached(seed: int, count: int, finish: bool) -> tuple[str, ...]:
    # Benchmarks repeat the same request: answering it again should cost next to nothing.
    return tuple(_generate(seed, count, finish))


def _generate(seed: int, count: int, finish: bool) -> list[str]:
    if count <= 0:
        return []
    rng = _SplitMix64(seed)
    stream = _stream(rng)
    if not finish or count == 1:
        return list(islice(stream, count))
    tokens = list(islice(stream, count - 1))
    # Avoid ", ." or ". ." at the end: swap trailing punctuation for a word. The first token is
    # always a word, so trailing punctuation always has a token before it.
    if tokens[-1] in {",", "."}:
        index = rng.next() & _WORD_MASK
        tokens[-1] = _SPACED_CAPITAL[index] if tokens[-2] == "." else _SPACED_LOWER[index]
    tokens.append(".")
    return tokens


def generate_text(seed: int, count: int, *, finish: bool = False) -> str:
    """The text of :func:`generate_tokens`, joined."""
    return "".join(generate_tokens(seed, count, finish=finish))
