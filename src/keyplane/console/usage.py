"""Usage and spend in the console: charts (requests, tokens, cost by model over time) for the team
and for one key, each key's last 24 hours in the keys table, and the team's monthly spending limit.

All of it through ``keyplane.usage.billing`` as the signed-in management key (``BillingRead`` to
see, ``BillingWrite`` to set the limit), the same use cases as ``POST
/v1/billing/teams/{teamId}/usage`` and the spending-limit RPCs. Charts are drawn in the page by
the vendored uPlot from the query's own data, embedded as JSON; a table carries the same totals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from keyplane.console import web
from keyplane.console.web import MAX_POLLED, TeamUser, User
from keyplane.domain.errors import InvalidArgument, KeyplaneError
from keyplane.domain.timefmt import format_ts
from keyplane.usage import billing
from keyplane.usage.record import COST_PER_USD

router = APIRouter(prefix=web.PREFIX, include_in_schema=False)

#: The ranges offered: (length, bucket).
RANGES = {
    "24h": (timedelta(hours=24), "TIME_UNIT_HOUR", "last 24 hours, by hour"),
    "7d": (timedelta(days=7), "TIME_UNIT_DAY", "last 7 days, by day"),
    "30d": (timedelta(days=30), "TIME_UNIT_DAY", "last 30 days, by day"),
}
TOTALS = ("requests", "prompt_tokens", "completion_tokens", "usd")


def _window(now: datetime, span: timedelta, unit: str) -> tuple[datetime, datetime]:
    """Whole buckets ending with the current one."""
    step = timedelta(hours=1) if unit == "TIME_UNIT_HOUR" else timedelta(days=1)
    floor = now.replace(minute=0, second=0, microsecond=0)
    if unit != "TIME_UNIT_HOUR":
        floor = floor.replace(hour=0)
    end = floor + step
    return end - span, end


def _query(
    request: Request,
    user: TeamUser,
    *,
    start: datetime,
    end: datetime,
    unit: str,
    values: tuple[str, ...],
    group_by: tuple[str, ...] = (),
    filters: tuple[str, ...] = (),
) -> dict[str, Any]:
    _settings, ctx, catalog = web.state(request)
    body = {
        "analyticsRequest": {
            "timeRange": {
                "startTime": format_ts(start),
                "endTime": format_ts(end),
                "timezone": "Etc/UTC",
            },
            "timeUnit": unit,
            "values": [{"name": v, "aggregation": "AGGREGATION_SUM"} for v in values],
            "groupBy": list(group_by),
            "filters": list(filters),
        }
    }
    return billing.usage(
        ctx, principal=user.principal, team_id=user.team_id, body=body, catalog=catalog
    )


@dataclass(frozen=True, slots=True)
class Charts:
    """What a usage section shows: uPlot data as JSON, and the totals by model as rows."""

    data: str
    totals: list[dict[str, Any]]
    total: dict[str, float]
    limit_reached: bool


def _epoch(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())


def charts(request: Request, user: TeamUser, span: str, key_id: str | None = None) -> Charts:
    length, unit, _label = RANGES[span]
    _settings, ctx, _catalog = web.state(request)
    start, end = _window(ctx.clock.now(), length, unit)
    filters = (f"api_key_id:{key_id}",) if key_id else ()
    overall = _query(request, user, start=start, end=end, unit=unit, values=TOTALS, filters=filters)
    by_model = _query(
        request,
        user,
        start=start,
        end=end,
        unit=unit,
        values=TOTALS,
        group_by=("model",),
        filters=filters,
    )
    points = overall["timeSeries"][0]["dataPoints"] if overall["timeSeries"] else []
    x = [_epoch(p["timestamp"]) for p in points]
    column = {name: [p["values"][i] for p in points] for i, name in enumerate(TOTALS)}
    models = by_model["timeSeries"]
    data = {
        "requests": {"x": x, "series": [{"label": "requests", "values": column["requests"]}]},
        "tokens": {
            "x": x,
            "series": [
                {"label": "prompt tokens", "values": column["prompt_tokens"]},
                {"label": "completion tokens", "values": column["completion_tokens"]},
            ],
        },
        "cost": {
            "x": [_epoch(p["timestamp"]) for p in models[0]["dataPoints"]] if models else x,
            "series": [
                {
                    "label": s["groupLabels"][0] if s["groupLabels"] else s["group"][0],
                    "values": [p["values"][3] for p in s["dataPoints"]],
                }
                for s in models
            ],
        },
    }
    totals = [
        {
            "model": s["groupLabels"][0] if s["groupLabels"] else s["group"][0],
            **{name: sum(p["values"][i] for p in s["dataPoints"]) for i, name in enumerate(TOTALS)},
        }
        for s in models
    ]
    total = {name: float(sum(column[name])) for name in TOTALS}
    # No "<" at all in the JSON a script element carries: model names are text from outside.
    encoded = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    return Charts(
        encoded,
        sorted(totals, key=lambda r: -r["usd"]),
        total,
        overall["limitReached"] or by_model["limitReached"],
    )


def usage_section(
    request: Request, user: TeamUser, span: str, key_id: str | None = None
) -> dict[str, Any]:
    """The template values of a usage section, or why there is none."""
    if not user.can("BillingRead"):
        return {"usage_error": "This management key lacks BillingRead, needed to see usage."}
    try:
        return {"usage": charts(request, user, span, key_id), "usage_error": ""}
    except KeyplaneError as failure:
        return {"usage_error": failure.message}


def _limits_page(
    request: Request,
    user: TeamUser,
    span: str,
    *,
    errors: dict[str, str] | None = None,
    value: str | None = None,
    notice: str = "",
    status: int = 200,
) -> Response:
    settings, ctx, _catalog = web.state(request)
    spend: dict[str, Any] | None = None
    if user.can("BillingRead"):
        found = billing.get_limits(
            ctx,
            principal=user.principal,
            team_id=user.team_id,
            hard_cents=settings.usage.hard_spending_limit_cents or None,
        )
        spend = {
            "spent": f"{found.spent_units / COST_PER_USD:.2f}",
            "soft": web.dollars(found.limits.soft),
            "hard": web.dollars(found.limits.hard),
            "effective": web.dollars(found.limits.effective),
            "blocked": found.blocked,
        }
    return web.page(
        request,
        "usage.html",
        status=status,
        user=user,
        span=span,
        ranges={k: v[2] for k, v in RANGES.items()},
        spend=spend,
        limit_value=value if value is not None else (spend or {}).get("soft", ""),
        errors=errors or {},
        notice=notice,
        can_write=user.can("BillingWrite"),
        **usage_section(request, user, span),
    )


Span = Annotated[str, Query(alias="range", pattern="^(24h|7d|30d)$")]


@router.get("/usage", response_class=HTMLResponse)
def usage_page(request: Request, user: User, span: Span = "7d") -> Response:
    return _limits_page(request, user, span)


@router.post("/usage/limit", response_class=HTMLResponse)
async def set_limit(request: Request, user: User) -> Response:
    form = await web.read_form(request)
    web.check_csrf(request, form, user.session.csrf)
    value = form.get("limit")
    settings, ctx, _catalog = web.state(request)

    def save() -> int | None:
        cents = web.cents(value) if value else None
        chosen, _ = billing.set_limit(
            ctx,
            principal=user.principal,
            team_id=user.team_id,
            cents=cents,
            hard_cents=settings.usage.hard_spending_limit_cents or None,
        )
        return chosen

    try:
        chosen = await run_in_threadpool(save)
    except KeyplaneError as failure:
        return await run_in_threadpool(
            _limits_page,
            request,
            user,
            "7d",
            errors={"limit": failure.message},
            value=value,
            status=400 if isinstance(failure, InvalidArgument) else 403,
        )
    notice = (
        "Spending limit removed."
        if chosen is None
        else f"Spending limit set to ${web.dollars(chosen)}."
    )
    return await run_in_threadpool(_limits_page, request, user, "7d", notice=notice)


@router.get("/keys/usage", response_class=HTMLResponse)
def keys_usage(
    request: Request,
    user: User,
    key_id: Annotated[list[str] | None, Query(alias="id", max_length=MAX_POLLED)] = None,
) -> Response:
    """Each listed key's requests and tokens of the last 24 hours, as out-of-band swaps."""
    ids = (key_id or [])[:MAX_POLLED]
    cells: dict[str, str] = dict.fromkeys(ids, "—")
    if user.can("BillingRead"):
        _settings, ctx, _catalog = web.state(request)
        end = ctx.clock.now().replace(second=0, microsecond=0) + timedelta(minutes=1)
        answer = _query(
            request,
            user,
            start=end - timedelta(hours=24),
            end=end,
            unit="TIME_UNIT_NONE",
            values=("requests", "total_tokens"),
            group_by=("api_key_id",),
        )
        found = {s["group"][0]: s["dataPoints"][0]["values"] for s in answer["timeSeries"]}
        for i in ids:
            if i in found:
                cells[i] = f"{found[i][0]:,.0f} req · {found[i][1]:,.0f} tok"
            elif not answer["limitReached"]:
                cells[i] = "0 req · 0 tok"
    return web.page(request, "_key_usage.html", cells=cells)
