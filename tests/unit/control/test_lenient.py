"""The Management API's forgiving JSON reader: trailing commas dropped, nothing else changed."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from keyplane.control.lenient import drop_trailing_commas, lenient_json

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _with_trailing_commas(value: Any, space: str) -> str:
    """JSON of ``value`` with a comma (and ``space``) after the last item of every container."""
    if isinstance(value, list):
        items = [_with_trailing_commas(v, space) for v in value]
        return "[" + "".join(f"{item}," for item in items) + space + "]"
    if isinstance(value, dict):
        pairs = [f"{json.dumps(k)}:{_with_trailing_commas(v, space)}" for k, v in value.items()]
        return "{" + "".join(f"{pair}," for pair in pairs) + space + "}"
    return json.dumps(value)


@given(_json_values)
def test_valid_json_is_left_alone(value: Any) -> None:
    text = json.dumps(value)
    assert drop_trailing_commas(text) == text


@given(_json_values, st.sampled_from(["", " ", "\n", " \t\r\n "]))
def test_trailing_commas_are_forgiven(value: Any, space: str) -> None:
    text = _with_trailing_commas(value, space)
    if isinstance(value, (list, dict)) and value:
        assert text != json.dumps(value)
    assert lenient_json(text.encode()) == value


@given(st.text())
def test_any_text_keeps_its_strings(text: str) -> None:
    # Whatever the input, the pass only ever removes commas.
    out = drop_trailing_commas(text)
    assert out.replace(",", "") == text.replace(",", "")


def test_the_seed_documents_trailing_comma() -> None:
    assert lenient_json(b'{"apiKey": {"qpm": 5},\n  "fieldMask": "qpm",\n}') == {
        "apiKey": {"qpm": 5},
        "fieldMask": "qpm",
    }


def test_commas_inside_strings_stay() -> None:
    assert lenient_json(b'["a,]", "b\\",}", 1,]') == ["a,]", 'b",}', 1]
