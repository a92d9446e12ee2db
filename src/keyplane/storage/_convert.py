"""Times as the tables hold them (integer microseconds since the epoch, UTC), both ways, with
``None`` kept as ``None``; shared by every aggregate's module."""

from __future__ import annotations

from datetime import datetime

from keyplane.domain.timefmt import from_micros, to_micros


def micros_or_none(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def time_or_none(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)
