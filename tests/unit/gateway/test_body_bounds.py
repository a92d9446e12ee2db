"""The gateway's body shape check agrees with a real JSON parser on depth and container count."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyplane.domain.errors import InvalidArgument
from keyplane.gateway.bounds import check_shape

_tricky_text = st.text(alphabet=st.sampled_from('[]{}"\\ ab,:\n\té\x00'), max_size=8)
_values = st.recursive(
    st.none() | st.integers() | _tricky_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_tricky_text, inner, max_size=3),
    max_leaves=30,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


def _containers(value: Any) -> int:
    if isinstance(value, list):
        return 1 + sum(_containers(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(_containers(v) for v in value.values())
    return 0


@given(
    _values,
    st.integers(min_value=0, max_value=4),
    st.integers(min_value=0, max_value=8),
    st.booleans(),
)
def test_refuses_exactly_the_bodies_over_a_bound(
    value: Any, depth: int, containers: int, draw_ascii: bool
) -> None:
    body = json.dumps(value, ensure_ascii=draw_ascii).encode()
    too_deep = _depth(value) > depth
    too_many = _containers(value) > containers
    try:
        check_shape(body, max_depth=depth, max_containers=containers)
    except InvalidArgument:
        refused = True
    else:
        refused = False
    assert refused == (too_deep or too_many)


def test_a_thousand_levels_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="deeper than 64"):
        check_shape(b'{"model": "m", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}")


def test_brackets_inside_strings_are_text() -> None:
    check_shape(json.dumps({"content": "[" * 1000 + '\\"{' * 100}).encode())
