"""Deterministic pseudo-text: same request, same words; every piece exactly one token."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from keyplane.modelserver.textgen import generate_text, generate_tokens, seed_for
from keyplane.modelserver.tokenizer import tokenize

seeds = st.integers(min_value=0, max_value=2**64 - 1)
counts = st.integers(min_value=1, max_value=200)


def test_same_model_and_prompt_give_the_same_text() -> None:
    seed = seed_for("keyplane-mini", "Say hello")
    assert generate_text(seed, 16) == generate_text(seed_for("keyplane-mini", "Say hello"), 16)


def test_model_and_prompt_both_change_the_text() -> None:
    base = generate_text(seed_for("keyplane-mini", "Say hello"), 16)
    assert generate_text(seed_for("keyplane-large", "Say hello"), 16) != base
    assert generate_text(seed_for("keyplane-mini", "Say hullo"), 16) != base


def test_text_reads_like_sentences() -> None:
    text = generate_text(seed_for("m", "p"), 40, finish=True)
    assert re.fullmatch(r"[A-Z][a-z]+(,? [a-zA-Z]+|\. [A-Z][a-z]+)*\.", text), text


@given(seeds, counts, st.booleans())
def test_every_piece_is_exactly_one_token(seed: int, count: int, finish: bool) -> None:
    pieces = generate_tokens(seed, count, finish=finish)
    assert len(pieces) == count
    # Re-tokenizing the joined text gives the same pieces back, so usage counts are exact.
    assert tokenize("".join(pieces)) == pieces


@given(seeds, counts)
def test_a_longer_output_extends_a_shorter_one(seed: int, count: int) -> None:
    assert generate_tokens(seed, count + 5)[:count] == generate_tokens(seed, count)


@given(seeds, st.integers(min_value=2, max_value=200))
def test_finished_text_ends_in_one_full_stop(seed: int, count: int) -> None:
    text = generate_text(seed, count, finish=True)
    assert text.endswith(".")
    assert not text.endswith((" .", ",.", ".."))


def test_long_outputs_continue_the_short_ones() -> None:
    # Short outputs are served from a cache, long ones generated afresh: both are one stream.
    seed = seed_for("m", "p")
    long = generate_tokens(seed, 2000)
    assert long[:300] == generate_tokens(seed, 300)
    assert tokenize("".join(long)) == long


def test_zero_tokens_is_empty() -> None:
    assert generate_tokens(1, 0) == []
