"""The usage room's HTTP surface on the control plane.

``ingest_router``: ``POST /internal/v1/usage`` for gateways (their feed credential; kept out of
/openapi.json). ``billing_router``: the hosted billing RPCs (usage analytics, spending limits).

No ``from __future__ import annotations``: FastAPI reads the routes' annotations, which name
the router's own dependencies, at definition time.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated
from zoneinfo import available_timezones

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, WithJsonSchema
from pydantic.alias_generators import to_camel
from starlette.concurrency import run_in_threadpool

from keyplane.catalog import Catalog
from keyplane.control.lenient import read_capped
from keyplane.control.schemas import INT64_SCHEMA, wire_config
from keyplane.domain.errors import InvalidArgument
from keyplane.propagation import feed
from keyplane.propagation.wire import GATEWAY_HEADER
from keyplane.services.auth import Principal
from keyplane.services.context import Context
from keyplane.settings import Settings
from keyplane.usage import billing, ingest, query
from keyplane.usage.wire import INGEST_PATH, MAX_BATCH_BYTES

_INT63 = 2**63 - 1


def ingest_router(ctx: Context, settings: Settings) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    hard = settings.usage.hard_spending_limit_cents or None

    async def ingest_usage(request: Request) -> Response:
        # A plain Starlette route: FastAPI's parameter solving and answer rendering cost more
        # than the ingest of a small batch (a gateway posts every 0.2 s, on the same cores).
        gateway = request.headers.get(GATEWAY_HEADER)
        if not gateway or len(gateway) > 128 or not gateway.isprintable():
            raise InvalidArgument(
                "a gateway id of 1-128 characters is required", field=GATEWAY_HEADER
            )
        segment, start, end = (_offset(request, name) for name in ("segment", "start", "end"))
        # The credential speaks for one gateway: usage is shipped under its id only.
        cluster = await run_in_threadpool(
            feed.authenticate_gateway_as, ctx, request.headers.get("authorization"), gateway
        )
        data = await read_capped(request, MAX_BATCH_BYTES)
        result = await run_in_threadpool(
            ingest.ingest,
            ctx,
            gateway_id=gateway,
            cluster=cluster,
            segment=segment,
            start=start,
            end=end,
            data=data,
            hard_limit_cents=hard,
        )
        answer = b'{"accepted":%d,"duplicates":%d}' % (result.accepted, result.duplicates)
        return Response(answer, media_type="application/json")

    router.add_route(INGEST_PATH, ingest_usage, methods=["POST"], include_in_schema=False)
    return router


def _offset(request: Request, name: str) -> int:
    """Query parameter ``name``: an integer of 0 to 2**63 - 1, in decimal digits."""
    value = request.query_params.get(name, "")
    # At most 19 digits before int(): past 4,300 digits int() raises (a 500, not a 400).
    if not (len(value) <= 19 and value.isascii() and value.isdigit() and int(value) <= _INT63):
        raise InvalidArgument("an integer of 0 to 2**63 - 1 is required", field=name)
    return int(value)


# -- the billing RPCs -----------------------------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


_RFC3339 = {"type": "string", "format": "date-time", "minLength": 20, "maxLength": 64}
_FILTER = (
    "^ *(NOT +)?((description|api_key_id|model|cluster|endpoint) *: *\\S.*"
    f"|status *: *({'|'.join(query.STATUS_CLASSES)}) *"
    f"|unit_type *: *({'|'.join(query.UNIT_TYPES)}) *)$"
)


def _one_of(names: tuple[str, ...]) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": [{"enum": list(names)}, {"type": "null"}]})


class TimeRange(_Wire):
    model_config = wire_config("startTime", "endTime")

    start_time: Annotated[str | None, WithJsonSchema(_RFC3339)] = Field(
        default=None, description="RFC 3339, or YYYY-MM-DD HH:MM:SS in the timezone."
    )
    end_time: Annotated[str | None, WithJsonSchema(_RFC3339)] = Field(
        default=None,
        description=f"Exclusive; after startTime, at most {query.MAX_RANGE.days} days later.",
    )
    timezone: Annotated[str | None, _one_of(("", *sorted(available_timezones())))] = Field(
        default=None, description="IANA name; default Etc/GMT."
    )


class ValueSpec(_Wire):
    model_config = wire_config("name")

    name: Annotated[str | None, WithJsonSchema({"enum": list(query.VALUES)})] = Field(
        default=None, description="usd, requests, prompt_tokens, completion_tokens, total_tokens"
    )
    aggregation: Annotated[str | None, _one_of(query.AGGREGATIONS)] = Field(
        default=None,
        description="AGGREGATION_SUM (default); AGGREGATION_COUNT (requests); AGGREGATION_AVG "
        "(per request); AGGREGATION_MIN, AGGREGATION_MAX (the smallest, largest single request; "
        "refused when groupBy or filters name unit_type)",
    )


class AnalyticsRequest(_Wire):
    model_config = wire_config("timeRange")

    # Required, not nullable: typed so (a missing one reaches the service, which says so).
    time_range: TimeRange = None  # type: ignore[assignment]
    time_unit: Annotated[str | None, _one_of(query.TIME_UNITS)] = Field(
        default=None, description="TIME_UNIT_MINUTE … TIME_UNIT_NONE"
    )
    values: Annotated[
        list[ValueSpec] | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/ValueSpec"},
                        "maxItems": query.MAX_VALUES,
                    },
                    {"type": "null"},
                ]
            }
        ),
    ] = None
    group_by: Annotated[
        list[str] | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {
                        "type": "array",
                        "items": {"enum": list(query.GROUPS)},
                        "uniqueItems": True,
                        "maxItems": len(query.GROUPS),
                    },
                    {"type": "null"},
                ]
            }
        ),
    ] = Field(
        default=None,
        description="description, api_key_id, model, cluster, endpoint, status, unit_type "
        f"({', '.join(query.UNIT_TYPES)}: a request's tokens and cost by what they were billed "
        "for; requests count under each)",
    )
    filters: Annotated[
        list[str] | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {
                        "type": "array",
                        "items": {
                            "type": "string",
                            "minLength": 3,
                            "maxLength": 300,
                            "pattern": _FILTER,
                        },
                        "maxItems": query.MAX_FILTERS,
                    },
                    {"type": "null"},
                ]
            }
        ),
    ] = Field(default=None, description="(NOT) field:value, ANDed")


class UsageRequest(_Wire):
    model_config = wire_config("analyticsRequest")

    analytics_request: AnalyticsRequest = None  # type: ignore[assignment]


class DataPoint(_Wire):
    timestamp: str
    values: list[float]


class TimeSeries(_Wire):
    group: list[str]
    group_labels: list[str]
    data_points: list[DataPoint]


class UsageResponse(_Wire):
    time_series: list[TimeSeries]
    limit_reached: bool = Field(
        description=f"The answer was cut at {query.MAX_SERIES} series or "
        f"{query.MAX_POINTS} points per series."
    )


class Cent(_Wire):
    model_config = wire_config("val")

    # Strict: pydantic's lax int would read ``false`` as 0 before the real check could refuse it.
    val: Annotated[
        StrictStr | StrictInt | StrictFloat | None,
        WithJsonSchema({"anyOf": [*INT64_SCHEMA["anyOf"], {"type": "null"}]}),
    ] = Field(default=None, description="USD cents, as a string; null removes the limit.")


class SpendingLimitsOut(_Wire):
    hard_sl_auto: Cent | None = None
    effective_hard_sl: Cent | None = None
    hard_sl_override: Cent | None = None
    soft_sl: Cent | None = None
    effective_sl: Cent | None = None


class GetSpendingLimitsResponse(_Wire):
    spending_limits: SpendingLimitsOut


class SetSpendingLimitRequest(_Wire):
    model_config = wire_config("desiredSoftSpendingLimit")

    desired_soft_spending_limit: Cent | None = None


class SetSpendingLimitResponse(_Wire):
    this_bp_soft_spending_limit: Cent | None = None


def _cent(value: int | None) -> Cent | None:
    return None if value is None else Cent(val=str(value))


TeamId = Annotated[str, Path(alias="teamId")]


def billing_router(
    ctx: Context,
    settings: Settings,
    catalog: Catalog,
    *,
    route_class: type[APIRoute],
    principal: Callable[..., Awaitable[Principal]],
) -> APIRouter:
    """``principal``: the app's dependency that authenticates the management key."""
    router = APIRouter(route_class=route_class, tags=["billing"])
    hard = settings.usage.hard_spending_limit_cents or None
    caller_type = Annotated[Principal, Depends(principal)]

    @router.post(
        "/v1/billing/teams/{teamId}/usage",
        response_model=UsageResponse,
        summary="GetUsage (BillingRead)",
    )
    def get_usage(team_id: TeamId, body: UsageRequest, caller: caller_type) -> Response:
        answer = billing.usage_json(
            ctx,
            principal=caller,
            team_id=team_id,
            body=body.model_dump(by_alias=True, exclude_none=True),
            catalog=catalog,
        )
        # Encoded directly: an answer may hold 1,000 series of 1,500 points, which pydantic
        # would validate object by object (``response_model`` documents the shape).
        return Response(answer, media_type="application/json")

    @router.get(
        "/v1/billing/teams/{teamId}/postpaid/spending-limits",
        response_model=GetSpendingLimitsResponse,
        response_model_exclude_none=True,
        summary="GetSpendingLimits (BillingRead)",
    )
    def get_spending_limits(team_id: TeamId, caller: caller_type) -> GetSpendingLimitsResponse:
        found = billing.get_limits(ctx, principal=caller, team_id=team_id, hard_cents=hard)
        return GetSpendingLimitsResponse(
            spending_limits=SpendingLimitsOut(
                hard_sl_auto=_cent(found.limits.hard),
                effective_hard_sl=_cent(found.limits.hard),
                soft_sl=_cent(found.limits.soft),
                effective_sl=_cent(found.limits.effective),
            )
        )

    @router.post(
        "/v1/billing/teams/{teamId}/postpaid/spending-limits",
        response_model=SetSpendingLimitResponse,
        response_model_exclude_none=True,
        summary="SetSoftSpendingLimit (BillingWrite)",
    )
    def set_spending_limit(
        team_id: TeamId, body: SetSpendingLimitRequest, caller: caller_type
    ) -> SetSpendingLimitResponse:
        cents = billing.parse_cents(body.model_dump(by_alias=True, exclude_unset=True))
        chosen, _ = billing.set_limit(
            ctx, principal=caller, team_id=team_id, cents=cents, hard_cents=hard
        )
        return SetSpendingLimitResponse(this_bp_soft_spending_limit=_cent(chosen))

    return router
