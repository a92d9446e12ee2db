"""Timestamps at their edges: the length bounds, the latest instant, each refusal's message, and a
process whose local zone is not UTC (written against the mutants mutation testing left alive)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyplane.domain.errors import InvalidArgument
from keyplane.domain.timefmt import format_micros, format_ts, parse_ts, to_micros


def refusal(text: object) -> str:
    with pytest.raises(InvalidArgument) as caught:
        parse_ts(text, field="expireTime")
    assert caught.value.field == "expireTime"
    return str(caught.value)


@pytest.fixture
def tokyo() -> Iterator[None]:
    """The process's local zone is nine hours ahead of UTC for the test."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def test_the_length_bounds_are_10_and_64_characters() -> None:
    ok = "2026-01-01T00:00:00.123456+00:00"
    assert parse_ts(ok.ljust(64), field="t") == parse_ts(ok, field="t")
    assert refusal(ok.ljust(65)) == "expireTime: must be an RFC 3339 timestamp string"
    assert "must be an RFC 3339 timestamp string" in refusal("2026-01-1")
    # Ten characters pass the length check and fail as a timestamp, with the other message.
    assert "is not an RFC 3339 timestamp" in refusal("2026-01-0x")
    assert "must be an RFC 3339 timestamp string" in refusal(20260101)


def test_a_zone_and_a_t_are_both_required() -> None:
    assert refusal("2026-01-01T00:00:00") == (
        "expireTime: timestamp needs a date, a time and a zone (Z)"
    )
    assert "timestamp needs a date, a time and a zone (Z)" in refusal("2026-01-01 00:00:00Z")
    assert parse_ts("2026-01-01t00:00:00z", field="t") == datetime(2026, 1, 1, tzinfo=UTC)


def test_the_latest_instant_is_accepted_and_one_beyond_is_not() -> None:
    assert parse_ts("9999-12-31T23:59:59Z", field="t") == datetime(
        9999, 12, 31, 23, 59, 59, tzinfo=UTC
    )
    assert refusal("9999-12-31T23:59:59.000001Z") == (
        "expireTime: timestamp is too far in the future"
    )


def test_an_instant_before_the_first_representable_utc_is_out_of_range() -> None:
    assert refusal("0001-01-01T00:00:00+01:00") == "expireTime: timestamp is out of range"


@pytest.mark.usefixtures("tokyo")
def test_conversions_are_utc_whatever_the_local_zone() -> None:
    instant = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert format_ts(instant) == "2026-01-01T12:00:00.000000Z"
    parsed = parse_ts("2026-01-01T21:00:00+09:00", field="t")
    assert parsed.utcoffset() is not None
    assert parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert parsed == instant
    assert to_micros(instant) == 1_767_268_800 * 1_000_000


@given(
    st.datetimes(
        timezones=st.just(UTC), min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)
    )
)
def test_a_stored_time_formats_as_its_datetime_does(value: datetime) -> None:
    """``format_micros`` (rows straight from the store) agrees with ``format_ts`` everywhere."""
    assert format_micros(to_micros(value)) == format_ts(value)
    assert format_micros(to_micros(value)).endswith("Z")


@given(
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    st.integers(min_value=-23 * 60, max_value=23 * 60),
)
def test_a_time_in_any_zone_formats_as_the_same_instant_in_utc(
    value: datetime, minutes: int
) -> None:
    zoned = value.replace(tzinfo=timezone(timedelta(minutes=minutes)))
    assert format_ts(zoned) == format_ts(zoned.astimezone(UTC))


def test_a_stored_time_reads_with_six_fractional_digits() -> None:
    assert format_micros(0) == "1970-01-01T00:00:00.000000Z"
    assert format_micros(1_764_167_107_000_001) == "2025-11-26T14:25:07.000001Z"
