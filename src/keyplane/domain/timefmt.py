"""Timestamps on the wire: RFC 3339, UTC, microseconds, ``Z``; and in storage: integer microseconds.

Everything in keyplane holds aware UTC datetimes; these helpers are the only conversions.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from keyplane.domain.errors import InvalidArgument

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Far enough for any expiry a person means; keeps microsecond integers inside int64.
_MAX = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def format_ts(value: datetime) -> str:
    """``2026-11-26T14:25:07.123456Z`` — always six fractional digits, always UTC."""
    # isoformat, not strftime: strftime("%Y") drops the leading zeros of years before 1000.
    if value.tzinfo is UTC:  # keyplane's own times: "+00:00" off the end, no conversion
        return value.isoformat(timespec="microseconds")[:-6] + "Z"
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


_NAIVE_EPOCH = datetime(1970, 1, 1)


def format_micros(value: int) -> str:
    """``format_ts`` of a stored time (microseconds since the epoch), without an aware datetime."""
    return (_NAIVE_EPOCH + timedelta(microseconds=value)).isoformat(timespec="microseconds") + "Z"


def parse_ts(text: object, *, field: str) -> datetime:
    """Read an RFC 3339 timestamp with a zone (``Z`` or an offset); anything else is a 400."""
    if not isinstance(text, str) or not 10 <= len(text) <= 64:
        raise InvalidArgument("must be an RFC 3339 timestamp string", field=field)
    candidate = text.strip()
    if candidate[-1:] in ("z", "Z"):
        candidate = candidate[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(candidate)
    except ValueError:
        raise InvalidArgument(
            f"{text!r} is not an RFC 3339 timestamp (e.g. 2026-11-26T14:25:07Z)", field=field
        ) from None
    if value.tzinfo is None or "T" not in candidate.upper():
        raise InvalidArgument("timestamp needs a date, a time and a zone (Z)", field=field)
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before the first representable UTC
        raise InvalidArgument("timestamp is out of range", field=field) from None
    if value > _MAX:
        raise InvalidArgument("timestamp is too far in the future", field=field)
    return value


def to_micros(value: datetime) -> int:
    delta = value.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)
