"""ListAuditEvents in memory: filters, both orders, and page tokens bound to their query."""

from __future__ import annotations

from typing import Any

import pytest

from keyplane.domain.errors import InvalidArgument, PermissionDenied
from keyplane.services import audit, keys
from keyplane.services.auth import Principal
from tests.support.fake_uow import FakeWorld


def events(
    world: FakeWorld, principal: Principal, team_id: str | None = None, **query: Any
) -> audit.AuditPage:
    args: dict[str, Any] = {
        "page_size": None,
        "page_token": None,
        "time_from": None,
        "time_to": None,
        "text": None,
        "user_id": None,
        "descending": False,
    }
    team = principal.team_id if team_id is None else team_id
    return audit.list_events(world.ctx, principal=principal, team_id=team, **{**args, **query})


def test_events_page_in_either_order_and_filter(world: FakeWorld, principal: Principal) -> None:
    for name in ("alpha", "beta", "gamma"):
        world.clock.advance(1)
        keys.create_key(
            world.ctx,
            principal=principal,
            team_id=principal.team_id,
            spec=keys.parse_new_key({"name": name, "acls": []}),
        )
    every = events(world, principal).events
    assert [e.operation for e in every] == ["CreateManagementKey"] + ["CreateApiKey"] * 3
    newest_first = events(world, principal, descending=True).events
    assert newest_first == every[::-1]
    assert [e.description for e in events(world, principal, text="BETA").events] == [
        every[2].description
    ]
    assert events(world, principal, user_id="someone else").events == []
    later = events(world, principal, time_from=every[2].event_time).events
    assert later == every[2:]

    page = events(world, principal, page_size=3, descending=True)
    assert page.events == every[::-1][:3]
    assert page.next_token is not None
    rest = events(world, principal, page_size=3, descending=True, page_token=page.next_token)
    assert rest.events == every[::-1][3:]
    assert rest.next_token is None
    with pytest.raises(InvalidArgument, match="pageToken"):
        events(world, principal, page_size=3, page_token=page.next_token)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"page_size": 0}, "pageSize"),
        ({"page_size": audit.MAX_PAGE + 1}, "pageSize"),
        ({"text": "x" * 257}, "eventFilter.query"),
        ({"user_id": "u" * 65}, "eventFilter.userId"),
        ({"page_token": "garbage"}, "pageToken"),
    ],
)
def test_bad_queries_name_their_field(
    world: FakeWorld, principal: Principal, query: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument, match=field):
        events(world, principal, **query)


def test_another_teams_events_are_refused(world: FakeWorld, principal: Principal) -> None:
    with pytest.raises(PermissionDenied):
        events(world, principal, team_id="another-team")
