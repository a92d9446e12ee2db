"""A user's script on the SDK's public surface; ``test_sdk_surface`` runs mypy --strict on it.

Not collected by pytest (no ``test_`` prefix) and never run: it only has to type-check.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from keyplane.client import (
    AnalyticsRequest,
    APIError,
    ApiKey,
    ApiKeyUpdate,
    AsyncClient,
    Client,
    NotFound,
    Propagation,
    PropagationTimeout,
    RateLimited,
    Retry,
    TimeRange,
    UsageValue,
)


def rotate_stale(client: Client, older_than: timedelta) -> list[str]:
    cutoff = datetime.now(UTC) - older_than
    rotated: list[str] = []
    for key in client.list_api_keys(page_size=200, active_only=True):
        if key.create_time is not None and key.create_time < cutoff:
            fresh: ApiKey = client.rotate_api_key(key.api_key_id)
            secret: str | None = fresh.api_key
            if secret is not None:
                rotated.append(key.api_key_id)
    return rotated


def provision(client: Client) -> str:
    key = client.create_api_key(
        "ci", acls=["api-key:endpoint:chat", "api-key:model:*"], qpm=600, tpm=100_000
    )
    try:
        status: Propagation = client.wait_propagated(key.api_key_id, timeout=10.0)
        pending: list[str] = status.pending()
        assert not pending
    except PropagationTimeout as error:
        print(error.api_key_id, error.propagation)
    client.update_api_key(key.api_key_id, ApiKeyUpdate(qpm=None, name="ci-2"), form="team")
    limit: int | None = client.get_api_key(key.api_key_id).tpm
    print(limit)
    for cluster in client.list_models():
        names: list[str] = [m.name for m in cluster.all_models()]
        print(cluster.cluster_name, names)
    print([a.acl for a in client.list_endpoint_acls()])
    for event in client.list_audit_events(descending=True, query="ci"):
        when: datetime = event.event_time
        print(when, event.operation)
    usage = client.get_usage(
        AnalyticsRequest(
            time_range=TimeRange(start_time="2026-12-01 00:00:00", end_time="2026-12-02 00:00:00"),
            time_unit="TIME_UNIT_HOUR",
            values=[UsageValue(name="usd", aggregation="AGGREGATION_SUM")],
            group_by=["description"],
        )
    )
    total: float = sum(p.values[0] for s in usage.time_series for p in s.data_points)
    print(total, client.get_spending_limits().effective_sl, client.set_spending_limit(20_000).val)
    try:
        client.delete_api_key(key.api_key_id)
    except NotFound:
        pass
    except RateLimited as error:
        wait: float | None = error.retry_after
        print(wait)
    except APIError as error:
        print(error.status, error.code, error.message)
    return key.api_key or ""


async def count_keys() -> int:
    async with AsyncClient(retry=Retry(attempts=2)) as client:
        page = await client.list_api_keys_page(page_size=10)
        token: str | None = page.pagination_token
        print(token)
        return len([key async for key in client.list_api_keys()])


if __name__ == "__main__":
    with Client("https://management-api.example", "xai-mgmt-...") as sync_client:
        print(provision(sync_client), rotate_stale(sync_client, timedelta(days=90)))
    print(asyncio.run(count_keys()))
