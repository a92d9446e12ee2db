"""The billing RPCs through a real control plane: usage analytics, spending limits, their ACLs,
and team isolation (no filter, group or path shows another team's usage)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest

from keyplane.usage.record import UsageRecord
from tests.support.gateway import WILDCARD
from tests.support.management import connect
from tests.support.procs import Deployment, admin_context, create_management_key
from tests.support.usage import ingest_batch

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def put_usage(dep: Deployment, records: list[UsageRecord], cluster: str = "us-east-1") -> None:
    with admin_context(dep) as ctx:
        ingest_batch(ctx, records, cluster=cluster)


def record(team: str, key: str, *, model: str = "grok-4", status: int = 200) -> UsageRecord:
    return UsageRecord(
        time_ms=int((NOW - timedelta(minutes=30)).timestamp() * 1000),
        team_id=team,
        api_key_id=key,
        model=model,
        endpoint="chat",
        status=status,
        prompt_tokens=10,
        completion_tokens=5,
        cost=10 * 2000 + 5 * 10000,
    )


def usage_body(**request: Any) -> dict[str, Any]:
    start = (NOW - timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S")
    end = (NOW + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
    return {
        "analyticsRequest": {
            "timeRange": {"startTime": start, "endTime": end, "timezone": "Etc/GMT"},
            "timeUnit": "TIME_UNIT_HOUR",
            "values": [
                {"name": "usd", "aggregation": "AGGREGATION_SUM"},
                {"name": "requests", "aggregation": "AGGREGATION_SUM"},
            ],
            **request,
        }
    }


class Team:
    def __init__(self, dep: Deployment, name: str) -> None:
        self.team_id, self.secret = dep.create_team(f"{name}-{uuid.uuid4().hex[:8]}")
        self.client = connect(dep.control_url, self.secret)
        self.keys = [self.create_key(f"{name} key {i}") for i in range(2)]

    def create_key(self, name: str) -> str:
        response = self.client.post(
            f"/auth/teams/{self.team_id}/api-keys", json={"name": name, "acls": WILDCARD}
        )
        assert response.status_code == 200, response.text
        key_id: str = response.json()["apiKeyId"]
        return key_id

    def usage(self, team_id: str | None = None, **request: Any) -> httpx2.Response:
        return self.client.post(
            f"/v1/billing/teams/{team_id or self.team_id}/usage", json=usage_body(**request)
        )


@pytest.fixture(scope="module")
def teams(module_deployment: Deployment) -> Iterator[tuple[Team, Team]]:
    a, b = Team(module_deployment, "a"), Team(module_deployment, "b")
    put_usage(
        module_deployment,
        [record(a.team_id, a.keys[0])] * 3
        + [record(a.team_id, a.keys[1], model="grok-3", status=429)] * 2
        + [record(b.team_id, b.keys[0])] * 7,
    )
    yield a, b
    a.client.close()
    b.client.close()


def totals(answer: dict[str, Any]) -> dict[tuple[str, ...], list[float]]:
    out: dict[tuple[str, ...], list[float]] = {}
    for series in answer["timeSeries"]:
        sums = [0.0, 0.0]
        for point in series["dataPoints"]:
            sums = [s + v for s, v in zip(sums, point["values"], strict=True)]
        out[tuple(series["group"])] = sums
    return out


def test_usage_grouped_by_key_and_status_with_dense_hourly_points(
    teams: tuple[Team, Team],
) -> None:
    a, _ = teams
    response = a.usage(groupBy=["api_key_id", "status"])
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["limitReached"] is False
    one = (10 * 2000 + 5 * 10000) / 10**10
    assert totals(answer) == {
        (a.keys[0], "2xx"): [pytest.approx(3 * one), 3],
        (a.keys[1], "429"): [pytest.approx(2 * one), 2],
    }
    for series in answer["timeSeries"]:
        assert len(series["dataPoints"]) == 3  # every hour of the range, zeros included
        assert series["groupLabels"][0].startswith("a key ")


def test_filters_with_not(teams: tuple[Team, Team]) -> None:
    a, _ = teams
    answer = a.usage(filters=["NOT model:grok-3"]).json()
    assert totals(answer) == {(): [pytest.approx(3 * 70000 / 10**10), 3]}
    answer = a.usage(filters=["model:grok-3-latest"]).json()  # an alias reads as its model
    assert totals(answer)[()][1] == 2


def test_a_team_never_sees_another_teams_usage(teams: tuple[Team, Team]) -> None:
    a, b = teams
    # By path: refused, as every other RPC refuses another team's path.
    refused = a.usage(team_id=b.team_id)
    assert refused.status_code == 403, refused.text
    # By filter or group: B's keys simply do not exist in A's usage.
    for filters in (
        [f"api_key_id:{b.keys[0]}"],
        [f"NOT api_key_id:{a.keys[0]}", f"NOT api_key_id:{a.keys[1]}"],
    ):
        answer = a.usage(filters=filters, groupBy=["api_key_id"]).json()
        assert answer["timeSeries"] == [], filters
    everything = a.usage(groupBy=["api_key_id", "cluster", "model", "endpoint"]).json()
    assert b.keys[0] not in str(everything)
    assert sum(v[1] for v in totals(everything).values()) == 5
    assert totals(b.usage().json())[()][1] == 7


def test_billing_acls_guard_the_rpcs(
    module_deployment: Deployment, teams: tuple[Team, Team]
) -> None:
    a, _ = teams
    _, none = create_management_key(
        module_deployment, a.team_id, name="no billing", acls=["team-token:endpoint:ListApiKeys"]
    )
    _, read = create_management_key(
        module_deployment, a.team_id, name="read", acls=["team-token:endpoint:BillingRead"]
    )
    limits = f"/v1/billing/teams/{a.team_id}/postpaid/spending-limits"
    with connect(module_deployment.control_url, none) as c:
        response = c.post(f"/v1/billing/teams/{a.team_id}/usage", json=usage_body())
        assert response.status_code == 403
        assert "BillingRead" in response.json()["error"]
        assert c.get(limits).status_code == 403
    with connect(module_deployment.control_url, read) as c:
        assert c.post(f"/v1/billing/teams/{a.team_id}/usage", json=usage_body()).status_code == 200
        assert c.get(limits).status_code == 200
        denied = c.post(limits, json={"desiredSoftSpendingLimit": {"val": "100"}})
        assert denied.status_code == 403
        assert "BillingWrite" in denied.json()["error"]


def test_spending_limits_read_and_set_as_cent_objects(teams: tuple[Team, Team]) -> None:
    _, b = teams
    path = f"/v1/billing/teams/{b.team_id}/postpaid/spending-limits"
    assert b.client.get(path).json() == {"spendingLimits": {}}
    answer = b.client.post(path, json={"desiredSoftSpendingLimit": {"val": "20000"}})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"thisBpSoftSpendingLimit": {"val": "20000"}}
    limits = b.client.get(path).json()["spendingLimits"]
    assert limits == {"softSl": {"val": "20000"}, "effectiveSl": {"val": "20000"}}
    for bad in ({"desiredSoftSpendingLimit": {"val": "-1"}}, {"desiredSoftSpendingLimit": 5}, {}):
        response = b.client.post(path, json=bad)
        assert response.status_code == 400, (bad, response.text)


def test_the_billing_rpcs_are_in_openapi(module_deployment: Deployment) -> None:
    paths = httpx2.get(module_deployment.control_url + "/openapi.json").json()["paths"]
    assert "post" in paths["/v1/billing/teams/{teamId}/usage"]
    assert {"get", "post"} <= set(paths["/v1/billing/teams/{teamId}/postpaid/spending-limits"])
    assert not any(p.startswith("/internal") for p in paths)
