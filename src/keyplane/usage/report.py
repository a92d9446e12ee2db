"""Operator reports (``keyplane admin usage``): usage per team, or per key of one team, over the
last days, with this month's spend against limits and budgets. Reads the hourly rollups (and the
minutes not folded into them yet)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Connection, Table, func, select, union_all

from keyplane.services.context import Context
from keyplane.storage import tables as t
from keyplane.usage import limits
from keyplane.usage.record import COST_PER_USD, COST_SCALE
from keyplane.usage.schema import ALL_KEYS, team_billing, usage_hours, usage_minutes
from keyplane.usage.store import folded_to_expression


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    name: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    usd: float
    month_cents: float
    limit: str
    blocked: bool


def _since(now: datetime, days: int) -> int:
    start = int((now - timedelta(days=days)).timestamp())
    return start - start % 3600


def _sums(
    conn: Connection, by: str, where: Callable[[Table], list[ColumnElement[bool]]]
) -> dict[str, tuple[int, ...]]:
    """Requests, prompt tokens, completion tokens and cost per column ``by``: the hourly rollups
    before the fold mark, the minutes from it on (``schema.usage_fold``)."""
    mark = folded_to_expression()
    parts = [
        select(
            table.c[by].label("by"),
            table.c.requests,
            table.c.prompt_tokens,
            table.c.completion_tokens,
            table.c.cost,
        ).where(bound, *where(table))
        for table, bound in (
            (usage_hours, usage_hours.c.bucket < mark),
            (usage_minutes, usage_minutes.c.bucket >= mark),
        )
    ]
    rows = union_all(*parts).subquery()
    query = select(
        rows.c.by,
        func.sum(rows.c.requests),
        func.sum(rows.c.prompt_tokens),
        func.sum(rows.c.completion_tokens),
        func.sum(rows.c.cost),
    ).group_by(rows.c.by)
    return {r[0]: tuple(int(v or 0) for v in r[1:]) for r in conn.execute(query)}


def _row(
    row_id: str,
    name: str,
    sums: tuple[int, ...] | None,
    *,
    spent: int,
    limit: str,
    until: int | None,
    now: datetime,
) -> Row:
    requests, prompt, completion, cost = sums or (0, 0, 0, 0)
    return Row(
        id=row_id,
        name=name,
        requests=requests,
        prompt_tokens=prompt,
        completion_tokens=completion,
        usd=cost / COST_PER_USD,
        month_cents=spent / COST_SCALE,
        limit=limit,
        blocked=until is not None and until > int(now.timestamp() * 1_000_000),
    )


def teams(ctx: Context, *, days: int) -> list[Row]:
    now = ctx.clock.now()
    since = _since(now, days)
    with ctx.db.read() as conn:
        sums = _sums(conn, "team_id", lambda h: [h.c.bucket >= since, h.c.api_key_id == ALL_KEYS])
        names = {r.team_id: r.name for r in conn.execute(select(t.teams.c.team_id, t.teams.c.name))}
        billing = {r.team_id: r for r in conn.execute(select(team_billing))}
        rows = []
        for team_id in sorted(set(sums) | set(names), key=lambda i: names.get(i, "")):
            b = billing.get(team_id)
            rows.append(
                _row(
                    team_id or "-",
                    names.get(team_id, "(no credentials)"),
                    sums.get(team_id),
                    spent=limits.team_month_spend(conn, team_id, now) if team_id else 0,
                    limit="-"
                    if b is None or b.soft_limit_cents is None
                    else str(b.soft_limit_cents),
                    until=None if b is None else b.blocked_until,
                    now=now,
                )
            )
    return rows


def keys(ctx: Context, *, team_id: str, days: int) -> list[Row]:
    now = ctx.clock.now()
    k, since = t.api_keys, _since(now, days)
    with ctx.db.read() as conn:
        sums = _sums(
            conn,
            "api_key_id",
            lambda h: [h.c.team_id == team_id, h.c.bucket >= since, h.c.api_key_id != ALL_KEYS],
        )
        found = {r.api_key_id: r for r in conn.execute(select(k).where(k.c.team_id == team_id))}
        rows = []
        for key_id in sorted(set(sums) | set(found)):
            key = found.get(key_id)
            period = key.budget_period if key is not None and key.budget_period else "MONTH"
            budget = "-"
            if key is not None and key.budget_cents is not None:
                budget = f"{key.budget_cents}/{period.lower()}"
            rows.append(
                _row(
                    key_id,
                    "(deleted)" if key is None else key.name,
                    sums.get(key_id),
                    spent=limits.key_period_spend(conn, key_id, period, now),
                    limit=budget,
                    until=None if key is None else key.budget_blocked_until,
                    now=now,
                )
            )
    return rows
