"""ListAuditEvents: a team's audit trail."""

from typing import Annotated, Any

from fastapi import Query

from keyplane.control import render, schemas
from keyplane.control.routes.api_keys import PAGE_SIZE, PAGE_TOKEN
from keyplane.control.routing import AppContext, Rpcs, TeamId, team_rpc
from keyplane.domain.errors import InvalidArgument
from keyplane.domain.timefmt import parse_ts
from keyplane.services import audit
from keyplane.services.auth import Principal

#: An empty time is no bound.
TIME_BOUND: dict[str, Any] = {
    "anyOf": [schemas.TIMESTAMP_SCHEMA, {"type": "string", "maxLength": 0}, {"type": "null"}]
}
ORDERS = ("TIME_ASCENDING", "TIME_DESCENDING")

rpcs = Rpcs("audit")


@rpcs.route(
    "GET", "/audit/teams/{teamId}/events", "ListAuditEvents", schemas.ListAuditEventsResponse
)
def list_audit_events(
    team_id: TeamId,
    principal: Annotated[Principal, team_rpc("ListAuditEvents")],
    ctx: AppContext,
    page_size: Annotated[int | None, Query(alias="pageSize", json_schema_extra=PAGE_SIZE)] = None,
    page_token: Annotated[
        str | None, Query(alias="pageToken", json_schema_extra=PAGE_TOKEN)
    ] = None,
    event_time_from: Annotated[
        str | None, Query(alias="eventTimeFrom", json_schema_extra=TIME_BOUND)
    ] = None,
    event_time_to: Annotated[
        str | None, Query(alias="eventTimeTo", json_schema_extra=TIME_BOUND)
    ] = None,
    query: Annotated[
        str | None, Query(alias="eventFilter.query", json_schema_extra={"maxLength": 256})
    ] = None,
    user_id: Annotated[
        str | None, Query(alias="eventFilter.userId", json_schema_extra={"maxLength": 64})
    ] = None,
    order_by: Annotated[
        str | None, Query(alias="orderBy", json_schema_extra={"enum": list(ORDERS)})
    ] = None,
) -> schemas.ListAuditEventsResponse:
    if order_by not in (None, "", *ORDERS):
        raise InvalidArgument("must be TIME_ASCENDING or TIME_DESCENDING", field="orderBy")
    page = audit.list_events(
        ctx,
        principal=principal,
        team_id=team_id,
        page_size=page_size,
        page_token=page_token,
        time_from=parse_ts(event_time_from, field="eventTimeFrom") if event_time_from else None,
        time_to=parse_ts(event_time_to, field="eventTimeTo") if event_time_to else None,
        text=query or None,
        user_id=user_id or None,
        descending=order_by == "TIME_DESCENDING",
    )
    return schemas.ListAuditEventsResponse(
        events=[render.audit_event(e) for e in page.events], next_page_token=page.next_token
    )
