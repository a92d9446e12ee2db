"""ListAuditEvents: a team's audit trail, paged, filtered, in either time order."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime

from keyplane.domain.errors import InvalidArgument
from keyplane.domain.model import AuditEvent
from keyplane.domain.pagination import decode_token, encode_token
from keyplane.domain.timefmt import to_micros
from keyplane.services.auth import Principal
from keyplane.services.context import Context
from keyplane.storage.audit import AuditQuery

MAX_PAGE = 1000
DEFAULT_PAGE = 100


@dataclass(frozen=True, slots=True)
class AuditPage:
    events: list[AuditEvent]
    next_token: str | None


def list_events(
    ctx: Context,
    *,
    principal: Principal,
    team_id: str,
    page_size: int | None,
    page_token: str | None,
    time_from: datetime | None,
    time_to: datetime | None,
    text: str | None,
    user_id: str | None,
    descending: bool,
) -> AuditPage:
    principal.require_team(team_id)
    size = DEFAULT_PAGE if page_size is None else page_size
    if not 1 <= size <= MAX_PAGE:
        raise InvalidArgument(f"must be between 1 and {MAX_PAGE}", field="pageSize")
    if text is not None and len(text) > 256:
        raise InvalidArgument("at most 256 characters", field="eventFilter.query")
    if user_id is not None and len(user_id) > 64:
        raise InvalidArgument("at most 64 characters", field="eventFilter.userId")
    query = AuditQuery(
        team_id=team_id,
        limit=size + 1,
        time_from=time_from,
        time_to=time_to,
        text=text,
        user_id=user_id,
        descending=descending,
    )
    scope = json.dumps(["audit", team_id, str(time_from), str(time_to), text, user_id, descending])
    if page_token:
        position = decode_token(ctx.server_secret, scope, page_token, field="pageToken")
        if len(position) != 2 or not isinstance(position[0], int):
            raise InvalidArgument("is not a valid page token", field="pageToken")
        query = replace(query, after=(position[0], str(position[1])))
    with ctx.read() as uow:
        events = uow.audit.page(query)
    token = None
    if len(events) > size:
        events = events[:size]
        last = events[-1]
        token = encode_token(ctx.server_secret, scope, [to_micros(last.event_time), last.event_id])
    return AuditPage(events, token)
