"""The usage RPC's answer encoded from its columns (``query.render_json``) is byte for byte what
encoding the rendered answer (``render``) gives, for any values, groups and bucket counts."""

from __future__ import annotations

import gc
from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.usage import query

_cell = st.one_of(
    st.integers(min_value=-(2**62), max_value=2**62),
    st.floats(allow_nan=False, allow_infinity=False),
)
_text = st.text(max_size=12)


@st.composite
def answers(draw: st.DrawFn) -> query.Answer:
    buckets = draw(st.integers(min_value=1, max_value=6))
    values = draw(st.integers(min_value=1, max_value=3))
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=draw(st.integers(0, 10**8)))
    series = [
        query.Series(
            group=draw(st.lists(_text, max_size=2)),
            labels=draw(st.lists(_text, max_size=2)),
            columns=[
                draw(st.lists(_cell, min_size=buckets, max_size=buckets)) for _ in range(values)
            ],
        )
        for _ in range(draw(st.integers(min_value=0, max_value=4)))
    ]
    stamps = [start + timedelta(hours=i) for i in range(buckets)]
    return query.Answer(stamps, series, draw(st.booleans()))


@settings(deadline=None)  # timing is not the point; a loaded machine is slow
@given(answers())
def test_the_columnar_encoding_is_the_rendered_answer_encoded(answer: query.Answer) -> None:
    assert query.render_json(answer) == msgspec.json.encode(query.render(answer))


def test_a_series_points_are_its_columns_per_bucket() -> None:
    series = query.Series(["k"], ["name"], [[1, 2], [0.5, 0.25]])
    assert series.points == [[1, 0.5], [2, 0.25]]


def test_the_collector_is_back_on_after_an_answer_even_when_it_fails() -> None:
    assert gc.isenabled()
    try:
        with query.paused_gc():
            assert not gc.isenabled()
            raise RuntimeError
    except RuntimeError:
        pass
    assert gc.isenabled()
    gc.disable()  # someone else's choice is left alone
    try:
        with query.paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
