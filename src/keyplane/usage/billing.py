"""Billing use cases: the usage query, and reading and setting a team's spending limit.

Every one acts on the caller's own team only: the team in the path must be the management key's,
and the query's ``team_id`` condition is added here, never taken from the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keyplane.catalog import Catalog
from keyplane.domain.errors import InvalidArgument
from keyplane.domain.model import validate_int64_limit
from keyplane.domain.timefmt import to_micros
from keyplane.services.auth import Principal
from keyplane.services.context import Context
from keyplane.usage import limits, query, store


def usage(
    ctx: Context, *, principal: Principal, team_id: str, body: Mapping[str, Any], catalog: Catalog
) -> dict[str, Any]:
    with query.paused_gc():
        return query.render(_answer(ctx, principal, team_id, body, catalog))


def usage_json(
    ctx: Context, *, principal: Principal, team_id: str, body: Mapping[str, Any], catalog: Catalog
) -> bytes:
    """``usage`` encoded as the route sends it (JSON), built without an object per point."""
    with query.paused_gc():
        return query.render_json(_answer(ctx, principal, team_id, body, catalog))


def _answer(
    ctx: Context, principal: Principal, team_id: str, body: Mapping[str, Any], catalog: Catalog
) -> query.Answer:
    principal.require("BillingRead")
    principal.require_team(team_id)
    parsed = query.parse(body)
    with ctx.db.read() as conn:
        return query.run(conn, principal.team_id, parsed, catalog)


@dataclass(frozen=True, slots=True)
class SpendingLimits:
    limits: limits.Limits
    spent_units: int
    blocked: bool


def get_limits(
    ctx: Context, *, principal: Principal, team_id: str, hard_cents: int | None
) -> SpendingLimits:
    principal.require("BillingRead")
    principal.require_team(team_id)
    now = ctx.clock.now()
    with ctx.db.read() as conn:
        found, row = limits.team_limits(conn, principal.team_id, hard_cents)
        spent = limits.team_month_spend(conn, principal.team_id, now)
    until = None if row is None else row.blocked_until
    blocked = until is not None and until > to_micros(now)
    return SpendingLimits(found, spent, blocked)


def parse_cents(body: Mapping[str, Any]) -> int | None:
    """``{"desiredSoftSpendingLimit": {"val": "20000"}}``; a null limit removes it."""
    if "desiredSoftSpendingLimit" not in body and "desired_soft_spending_limit" not in body:
        raise InvalidArgument("is required", field="desiredSoftSpendingLimit")
    desired = body.get("desiredSoftSpendingLimit", body.get("desired_soft_spending_limit"))
    if desired is None:
        return None
    if not isinstance(desired, dict) or "val" not in desired:
        raise InvalidArgument(
            'must be a Cent object like {"val": "20000"}', field="desiredSoftSpendingLimit"
        )
    return validate_int64_limit(desired["val"], field="desiredSoftSpendingLimit.val")


def set_limit(
    ctx: Context,
    *,
    principal: Principal,
    team_id: str,
    cents: int | None,
    hard_cents: int | None,
) -> tuple[int | None, list[int]]:
    """Set (or with ``None`` remove) the team's soft limit; block or unblock it at once."""
    principal.require("BillingWrite")
    principal.require_team(team_id)
    with ctx.sql_write() as uow:
        _, row = limits.team_limits(uow.conn, team_id, hard_cents)
        store.save_team_billing(
            uow.conn,
            team_id,
            soft_limit_cents=cents,
            blocked_until=None if row is None else row.blocked_until,
            now=uow.now,
        )
        shown = "none" if cents is None else f"{cents} cents"
        uow.record(
            team_id=team_id,
            user_id=principal.user_id,
            operation="SetSpendingLimit",
            entity_type="TEAM",
            entity_id=team_id,
            description=f"Set the monthly spending limit to {shown}",
        )
        revisions = limits.check_team(uow, team_id, hard_cents=hard_cents)
    return cents, revisions
