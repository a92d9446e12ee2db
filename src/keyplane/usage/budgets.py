"""Per-key budgets (keyplane's own field, beyond the hosted API): ``{"cents": "500", "period":
"MONTH"}`` on an API key; the key is blocked (``api_key_blocked``) while its spend in the current
UTC period (DAY, WEEK or MONTH) is at or above it.

``refine`` is what a key write calls before it commits: it sets the key's block times from the
spend so far and its team's spending limit, so a budget lowered below the spend blocks at once, a
raised one unblocks at once, and a key made while its team is blocked is born blocked.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from sqlalchemy import Connection

from keyplane.domain.errors import InvalidArgument
from keyplane.domain.model import ApiKey, validate_int64_limit
from keyplane.domain.timefmt import from_micros, to_micros
from keyplane.usage import limits, store
from keyplane.usage.periods import PERIODS, period_bounds
from keyplane.usage.record import COST_SCALE


def parse_budget(value: object, *, field: str) -> tuple[int | None, str | None]:
    """``(cents, period)`` of a budget object; null clears the budget."""
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise InvalidArgument(
            'must be an object like {"cents": "500", "period": "MONTH"}', field=field
        )
    cents = validate_int64_limit(value.get("cents"), field=f"{field}.cents")
    if cents is None:
        raise InvalidArgument("is required", field=f"{field}.cents")
    period = value.get("period") or "MONTH"
    if period not in PERIODS:
        raise InvalidArgument(f"must be one of {', '.join(PERIODS)}", field=f"{field}.period")
    return cents, str(period)


def refine(conn: Connection, key: ApiKey, now: datetime) -> ApiKey:
    """``key`` with its block times as its budget, its spend and its team's block say."""
    budget_until: datetime | None = None
    if key.budget_cents is not None and key.budget_period is not None:
        spent = limits.key_period_spend(conn, key.api_key_id, key.budget_period, now)
        if spent >= key.budget_cents * COST_SCALE:
            budget_until = period_bounds(key.budget_period, now)[1]
    row = store.team_billing_row(conn, key.team_id)
    team_until = None
    if row is not None and row.blocked_until is not None and row.blocked_until > to_micros(now):
        team_until = from_micros(row.blocked_until)
    return replace(key, budget_blocked_until=budget_until, team_blocked_until=team_until)
