"""Spending limits (per team, per UTC month) and budgets (per key, per UTC day, week or month).

A team or key whose spend reaches its limit is *blocked until the period ends*: the block is a
time on the key's row (``team_blocked_until`` / ``budget_blocked_until``), carried to every
gateway in the key's enforcement view through the change feed like any other key change, with
its own revision and an audit event. Gateways refuse a key while that time is ahead, so a block
also lifts by itself when the month (or the budget's period) turns; raising the limit lifts it at
once, with another change.

Each of these acts in the caller's unit of work (``ctx.sql_write()``), which records their
change-log rows and audit events, wakes the feed once it has committed, and whose time
(``uow.now``) every row they write carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, update

from keyplane.domain.timefmt import from_micros, to_micros
from keyplane.storage import tables as t
from keyplane.storage.api_keys import ApiKeys
from keyplane.storage.unit_of_work import SqlUnitOfWork
from keyplane.usage import store
from keyplane.usage.periods import period_bounds
from keyplane.usage.record import COST_SCALE

#: The user id audit events of automatic blocks carry.
SYSTEM_USER = "keyplane-billing"


@dataclass(frozen=True, slots=True)
class Limits:
    """A team's limits in cents; ``None`` = none."""

    soft: int | None
    hard: int | None

    @property
    def effective(self) -> int | None:
        values = [v for v in (self.soft, self.hard) if v is not None]
        return min(values) if values else None


def _set_key_column(
    uow: SqlUnitOfWork, *, api_key_id: str, team_id: str, column: str, until: datetime | None
) -> int | None:
    """Set a block column of one key with a new revision and its change-log row."""
    conn = uow.conn
    revision = uow.next_revision()
    conn.execute(
        update(t.api_keys)
        .where(t.api_keys.c.api_key_id == api_key_id)
        .values({column: None if until is None else to_micros(until), "revision": revision})
    )
    key = ApiKeys(conn).get(api_key_id, team_id=team_id)
    if key is None:  # pragma: no cover - the row was just updated in this transaction
        return None
    uow.key_revised(key)
    return revision


def team_limits(conn: Connection, team_id: str, hard_cents: int | None) -> tuple[Limits, Any]:
    row = store.team_billing_row(conn, team_id)
    soft = None if row is None else row.soft_limit_cents
    return Limits(soft, hard_cents), row


def team_month_spend(conn: Connection, team_id: str, now: datetime) -> int:
    """This UTC month's spend of the team, in cost units (1e-8 cents)."""
    start, _ = period_bounds("MONTH", now)
    return store.spend_since(conn, store.team_subject(team_id), int(start.timestamp()))


def key_period_spend(conn: Connection, api_key_id: str, period: str, now: datetime) -> int:
    start, _ = period_bounds(period, now)
    return store.spend_since(conn, store.key_subject(api_key_id), int(start.timestamp()))


def apply_team_block(
    uow: SqlUnitOfWork,
    *,
    team_id: str,
    until: datetime | None,
    why: str,
    soft_limit_cents: int | None,
) -> list[int]:
    """Block (``until`` set) or unblock (``None``) a team: every key of it gets a change."""
    store.save_team_billing(
        uow.conn,
        team_id,
        soft_limit_cents=soft_limit_cents,
        blocked_until=None if until is None else to_micros(until),
        now=uow.now,
    )
    revisions = [
        r
        for key_id in store.team_key_ids(uow.conn, team_id)
        if (
            r := _set_key_column(
                uow, api_key_id=key_id, team_id=team_id, column="team_blocked_until", until=until
            )
        )
        is not None
    ]
    uow.record(
        team_id=team_id,
        user_id=SYSTEM_USER,
        operation="BlockTeam" if until is not None else "UnblockTeam",
        entity_type="TEAM",
        entity_id=team_id,
        description=why,
    )
    return revisions


def apply_key_block(
    uow: SqlUnitOfWork, *, api_key_id: str, team_id: str, until: datetime | None, why: str
) -> list[int]:
    revision = _set_key_column(
        uow, api_key_id=api_key_id, team_id=team_id, column="budget_blocked_until", until=until
    )
    uow.record(
        team_id=team_id,
        user_id=SYSTEM_USER,
        operation="BlockApiKey" if until is not None else "UnblockApiKey",
        entity_type="API_KEY",
        entity_id=api_key_id,
        description=why,
    )
    return [] if revision is None else [revision]


def _cents(units: int) -> str:
    return f"{units / COST_SCALE:.2f}"


def check_team(uow: SqlUnitOfWork, team_id: str, *, hard_cents: int | None) -> list[int]:
    """Block the team if this month's spend reached its effective limit, unblock it if not."""
    conn, now = uow.conn, uow.now
    limits, row = team_limits(conn, team_id, hard_cents)
    limit = limits.effective
    blocked_until = None if row is None or row.blocked_until is None else row.blocked_until
    blocked = blocked_until is not None and blocked_until > to_micros(now)
    if limit is None and not blocked:
        return []
    spent = team_month_spend(conn, team_id, now)
    over = limit is not None and spent >= limit * COST_SCALE
    if over and not blocked:
        _, month_end = period_bounds("MONTH", now)
        return apply_team_block(
            uow,
            team_id=team_id,
            until=month_end,
            why=f"Team blocked: spend this month ({_cents(spent)} cents) reached the spending "
            f"limit of {limit} cents",
            soft_limit_cents=limits.soft,
        )
    if blocked and not over:
        return apply_team_block(
            uow,
            team_id=team_id,
            until=None,
            why=f"Team unblocked: spend this month ({_cents(spent)} cents) is under the limit",
            soft_limit_cents=limits.soft,
        )
    return []


def check_key(
    uow: SqlUnitOfWork,
    *,
    api_key_id: str,
    team_id: str,
    budget_cents: int | None,
    period: str | None,
    blocked_until: int | None,
) -> list[int]:
    """Block the key if its spend this period reached its budget; unblock it if not."""
    now = uow.now
    blocked = blocked_until is not None and blocked_until > to_micros(now)
    if budget_cents is None or period is None:
        over = False
        spent = 0
    else:
        spent = key_period_spend(uow.conn, api_key_id, period, now)
        over = spent >= budget_cents * COST_SCALE
    if over and not blocked:
        assert period is not None
        _, end = period_bounds(period, now)
        return apply_key_block(
            uow,
            api_key_id=api_key_id,
            team_id=team_id,
            until=end,
            why=f"API key blocked: spend this {period.lower()} ({_cents(spent)} cents) reached "
            f"its budget of {budget_cents} cents",
        )
    if blocked and not over:
        return apply_key_block(
            uow,
            api_key_id=api_key_id,
            team_id=team_id,
            until=None,
            why="API key unblocked: its spend is under its budget",
        )
    return []


def lift_expired(uow: SqlUnitOfWork) -> list[int]:
    """Clear blocks whose period has ended (gateways already stopped enforcing them)."""
    conn = uow.conn
    now_us = to_micros(uow.now)
    revisions: list[int] = []
    for team_id in store.expired_team_blocks(conn, until_before=now_us + 1):
        row = store.team_billing_row(conn, team_id)
        revisions += apply_team_block(
            uow,
            team_id=team_id,
            until=None,
            why="Team unblocked: a new month began",
            soft_limit_cents=None if row is None else row.soft_limit_cents,
        )
    for row in store.blocked_keys(conn, until_before=now_us + 1):
        key = ApiKeys(conn).get(row.api_key_id, team_id=row.team_id)
        if key is None:
            continue
        if key.budget_blocked_until is not None and to_micros(key.budget_blocked_until) <= now_us:
            revisions += apply_key_block(
                uow,
                api_key_id=key.api_key_id,
                team_id=key.team_id,
                until=None,
                why="API key unblocked: its budget period ended",
            )
        if key.team_blocked_until is not None and to_micros(key.team_blocked_until) <= now_us:
            revision = _set_key_column(
                uow,
                api_key_id=key.api_key_id,
                team_id=key.team_id,
                column="team_blocked_until",
                until=None,
            )
            revisions += [] if revision is None else [revision]
    return revisions


def blocked_until(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)
