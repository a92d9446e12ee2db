"""The billing RPCs through the SDK: usage of real requests metered at a gateway, and spending
limits, sync and async."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx2
import pytest

from keyplane.client import (
    AnalyticsRequest,
    AsyncClient,
    Client,
    PermissionDenied,
    TimeRange,
    Usage,
    UsageValue,
)
from tests.client.conftest import TeamCreds
from tests.support.gateway import HELLO, Stack
from tests.support.procs import create_management_key, wait_for


def this_hour() -> AnalyticsRequest:
    now = datetime.now(UTC)
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    end = start + timedelta(hours=3)
    return AnalyticsRequest(
        time_range=TimeRange(
            start_time=start.strftime("%Y-%m-%d %H:%M:%S"),
            end_time=end.strftime("%Y-%m-%d %H:%M:%S"),
            timezone="Etc/GMT",
        ),
        time_unit="TIME_UNIT_NONE",
        values=[
            UsageValue(name="requests", aggregation="AGGREGATION_SUM"),
            UsageValue(name="usd", aggregation="AGGREGATION_SUM"),
        ],
        group_by=["api_key_id"],
    )


def test_usage_of_requests_made_at_a_gateway(client: Client, stack: Stack) -> None:
    key = client.create_api_key("metered", acls=["api-key:endpoint:chat", "api-key:model:*"])
    client.wait_propagated(key.api_key_id, timeout=15)
    for _ in range(3):
        answer = httpx2.post(
            stack.url() + "/v1/chat/completions",
            json={"model": "grok-4", "messages": HELLO},
            headers={"Authorization": f"Bearer {key.api_key}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text

    def counted() -> Usage | None:
        usage = client.get_usage(this_hour())
        points = [p for s in usage.time_series for p in s.data_points]
        return usage if sum(p.values[0] for p in points) >= 3 else None

    usage: Usage = wait_for(counted, timeout=20, what="three requests in the usage")
    assert usage.limit_reached is False
    [series] = usage.time_series
    assert series.group == [key.api_key_id]
    [point] = series.data_points
    requests, usd = point.values
    assert requests == 3
    assert usd > 0  # grok-4 has prices in the built-in catalog


def test_spending_limits_read_and_set(client: Client) -> None:
    assert client.get_spending_limits().soft_sl is None  # no limit yet
    assert client.set_spending_limit(20_000).val == 20_000
    limits = client.get_spending_limits()
    assert limits.soft_sl is not None
    assert limits.soft_sl.val == 20_000
    assert limits.effective_sl is not None
    assert limits.effective_sl.val == 20_000


def test_billing_needs_its_acls(stack: Stack, team: TeamCreds) -> None:
    _, reader = create_management_key(
        stack.dep, team.team_id, acls=["team-token:endpoint:BillingRead"]
    )
    with Client(team.base_url, reader, team_id=team.team_id) as limited:
        assert limited.get_usage(this_hour()).time_series == []
        limited.get_spending_limits()
        with pytest.raises(PermissionDenied):
            limited.set_spending_limit(100)
    _, keys_only = create_management_key(
        stack.dep, team.team_id, acls=["team-token:endpoint:ListApiKeys"]
    )
    with (
        Client(team.base_url, keys_only, team_id=team.team_id) as limited,
        pytest.raises(PermissionDenied),
    ):
        limited.get_usage(this_hour())


async def test_async_billing(team: TeamCreds) -> None:
    async with AsyncClient(team.base_url, team.secret) as client:
        assert (await client.get_usage(this_hour())).time_series == []
        assert (await client.set_spending_limit(12_345)).val == 12_345
        limits = await client.get_spending_limits()
        assert limits.soft_sl is not None
        assert limits.soft_sl.val == 12_345
