"""Embedding vectors: deterministic, unit-norm, and identical in float and base64 encodings."""

from __future__ import annotations

import base64
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyplane.modelserver.embeddings import (
    MAX_DIMENSIONS,
    embed,
    embed_token_ids,
    from_base64,
    to_base64,
)


@given(st.text(min_size=1), st.integers(min_value=1, max_value=1024))
def test_vectors_are_unit_norm_with_the_asked_dimensions(text: str, dims: int) -> None:
    vector = embed("keyplane-embed", text, dims)
    assert len(vector) == dims
    assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-5)


def test_vectors_are_deterministic_and_depend_on_every_input() -> None:
    base = embed("keyplane-embed", "hello", 256)
    assert embed("keyplane-embed", "hello", 256) == base
    assert embed("keyplane-embed", "hullo", 256) != base
    assert embed("other-model", "hello", 256) != base
    assert embed_token_ids("keyplane-embed", [1, 2, 3], 256) != base


@given(st.text(min_size=1), st.integers(min_value=1, max_value=64))
def test_base64_carries_exactly_the_float_values(text: str, dims: int) -> None:
    vector = embed("m", text, dims)
    encoded = to_base64(vector)
    # OpenAI's format: little-endian float32, base64.
    raw = base64.b64decode(encoded)
    assert list(struct.unpack(f"<{dims}f", raw)) == vector
    assert from_base64(encoded) == vector


def test_dimensions_out_of_range_are_rejected() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        embed("m", "x", 0)
    with pytest.raises(ValueError, match="dimensions"):
        embed("m", "x", MAX_DIMENSIONS + 1)
