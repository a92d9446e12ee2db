"""Timestamps: RFC 3339, UTC, microseconds, Z — round trips and refusals."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from keyplane.domain.errors import InvalidArgument
from keyplane.domain.timefmt import format_ts, from_micros, parse_ts, to_micros

CANONICAL = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
LAST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)  # the latest instant accepted
utc_times = st.datetimes(
    min_value=datetime(1, 1, 1),
    max_value=datetime(9999, 12, 31, 23, 59, 59),
    timezones=st.just(UTC),
)
offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
any_times = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59), timezones=offsets
)


def parse(text: object) -> datetime:
    return parse_ts(text, field="expireTime")


@given(utc_times)
@example(datetime(1, 1, 1, tzinfo=UTC))
@example(datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
@example(datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC))
def test_format_then_parse_is_the_same_instant(value: datetime) -> None:
    text = format_ts(value)

    assert CANONICAL.fullmatch(text), text
    assert parse(text) == value
    assert format_ts(parse(text)) == text


@given(any_times)
@example(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))))
@example(datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-1))))
def test_any_offset_is_read_as_the_same_instant_in_utc(value: datetime) -> None:
    text = value.isoformat()
    try:
        in_utc = value.astimezone(UTC)
    except OverflowError:
        in_utc = None
    if in_utc is None or in_utc > LAST:
        with pytest.raises(InvalidArgument):
            parse(text)
        return

    parsed = parse(text)

    assert parsed == value
    assert parsed.utcoffset() == timedelta(0)
    assert format_ts(parsed) == format_ts(in_utc)


@given(utc_times)
def test_a_lowercase_z_and_an_explicit_zero_offset_mean_utc(value: datetime) -> None:
    text = format_ts(value)
    assert parse(text[:-1] + "z") == parse(text[:-1] + "+00:00") == value


@given(st.integers(to_micros(datetime(1, 1, 1, tzinfo=UTC)), to_micros(LAST)))
def test_microseconds_round_trip(micros: int) -> None:
    assert to_micros(from_micros(micros)) == micros


@given(st.text(max_size=40) | st.integers() | st.none() | st.floats() | st.lists(st.text()))
@example("yesterday")
@example("2026-01-01")
@example("2026-01-01T00:00:00")
@example("2026-01-01 00:00:00Z")
@example("2026-13-01T00:00:00Z")
@example("2026-02-30T00:00:00Z")
@example("2026-01-01T24:00:00Z")
@example("2026-01-01T00:00:60Z")
@example("2026-01-01T00:00:00+24:00")
@example("0001-01-01T00:00:00+00:01")
@example("9999-12-31T23:59:59.000001Z")
@example("1767225600")
def test_anything_else_is_invalid_argument(text: object) -> None:
    try:
        value = parse(text)
    except InvalidArgument as error:
        assert error.field == "expireTime"  # noqa: PT017 - the exception is the outcome under test
    else:
        assert isinstance(text, str)
        assert value.utcoffset() == timedelta(0)
        assert value <= LAST
