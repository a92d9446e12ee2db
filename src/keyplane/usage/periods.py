"""Calendar periods in UTC: days, ISO weeks (Monday first) and months, as epoch seconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

PERIODS = ("DAY", "WEEK", "MONTH")
DAY = 86_400


def day_of(epoch: int) -> int:
    return epoch - epoch % DAY


def period_bounds(period: str, moment: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` of the UTC ``period`` (DAY, WEEK or MONTH) holding ``moment``."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "DAY":
        return day, day + timedelta(days=1)
    if period == "WEEK":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "MONTH":
        start = day.replace(day=1)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        return start, end
    raise ValueError(period)
