"""The one fast path reads query parameters as FastAPI's solver does (``lenient._Param``: one
value or every value of a name, empty as missing, the default, the route's own validation): any
query string on ListApiKeys and ListAuditEvents gets the same status and bytes with it as
without it (hypothesis: names of the routes' parameters and others, repeated or not, values
empty, plain, signed, spaced, non-ASCII)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyplane.control.lenient import FAST_PATH
from keyplane.control.routes import api_keys, audit
from tests.support.fastpath import team
from tests.support.inprocess import AppClient, ControlApp, control_app

NAMES = [
    "pageSize",
    "paginationToken",
    "pageToken",
    "aclFilters",
    "activeOnly",
    "orderBy",
    "eventTimeFrom",
    "eventFilter.userId",
    "other",
]
VALUES = st.one_of(
    st.sampled_from(["", "1", "2", "02", "-1", "0", "1001", " 3", "true", "no", "TIME_DESCENDING"]),
    st.sampled_from(["api-key:endpoint:chat", "api-key:model:*", "2026-01-01T00:00:00Z"]),
    st.text(st.characters(codec="utf-8"), max_size=6),
)
QUERIES = st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=4)
ENDPOINTS = [api_keys.list_api_keys, audit.list_audit_events]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlApp, str, str]]:
    with control_app(tmp_path_factory.mktemp("fastqueries")) as control:
        team_id, secret = team(control)
        with control.client(secret) as client:
            for i in range(3):
                body = {"name": f"k{i}", "acls": ["api-key:endpoint:chat"] if i else None}
                assert client.post(f"/auth/teams/{team_id}/api-keys", json=body).status_code == 200
        yield control, team_id, secret


def _answer(client: AppClient, path: str, query: str, fast: bool) -> tuple[int, bytes]:
    for endpoint in ENDPOINTS:
        if fast:
            setattr(endpoint, FAST_PATH, True)
        else:
            delattr(endpoint, FAST_PATH)
    try:
        r = client.get(f"{path}?{query}")
    finally:
        for endpoint in ENDPOINTS:
            setattr(endpoint, FAST_PATH, True)
    return r.status_code, r.content


@pytest.mark.slow  # ~3-20 s: two in-process requests per example
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(query=QUERIES, where=st.sampled_from(["/auth/teams/{}/api-keys", "/audit/teams/{}/events"]))
def test_any_query_gets_the_same_answer_on_either_path(
    setup: tuple[ControlApp, str, str], query: list[tuple[str, str]], where: str
) -> None:
    control, team_id, secret = setup
    encoded = urlencode(query)
    with control.client(secret) as client:
        path = where.format(team_id)
        assert _answer(client, path, encoded, True) == _answer(client, path, encoded, False)
