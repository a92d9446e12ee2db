"""Each Management API RPC as a ``Call``: path, query, body, answer type, idempotence.

The sync and async clients send these; they hold no logic of their own beyond I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

import msgspec

from keyplane.client import types as t
from keyplane.client._base import Call, idempotency_key


def _seg(value: str) -> str:
    """A path segment: ids are UUIDs, but never let a value change the route."""
    return quote(value, safe="")


class Empty(msgspec.Struct):
    pass


def create_api_key(
    team_id: str,
    name: str,
    acls: Sequence[str],
    qps: int | None,
    qpm: int | None,
    tpm: int | None,
    expire_time: datetime | None,
    budget: t.Budget | None,
    key: str | None,
) -> Call[t.ApiKey]:
    body: dict[str, Any] = {"name": name, "acls": list(acls)}
    if qps is not None:
        body["qps"] = qps
    if qpm is not None:
        body["qpm"] = qpm
    if tpm is not None:
        body["tpm"] = str(tpm)
    if expire_time is not None:
        body["expireTime"] = t.rfc3339(expire_time)
    if budget is not None:
        body["budget"] = budget.wire()
    return Call(
        "POST",
        f"/auth/teams/{_seg(team_id)}/api-keys",
        t.ApiKey,
        idempotent=True,  # the Idempotency-Key makes a resend answer the first key
        body=body,
        headers={"Idempotency-Key": key or idempotency_key()},
    )


def list_api_keys(
    team_id: str,
    page_size: int | None,
    token: str | None,
    acl_filters: Sequence[str],
    active_only: bool,
) -> Call[t.ApiKeyPage]:
    params = [("aclFilters", acl) for acl in acl_filters]
    if page_size is not None:
        params.append(("pageSize", str(page_size)))
    if token:
        params.append(("paginationToken", token))
    if active_only:
        params.append(("activeOnly", "true"))
    return Call(
        "GET", f"/auth/teams/{_seg(team_id)}/api-keys", t.ApiKeyPage, idempotent=True, params=params
    )


def update_api_key(api_key_id: str, update: t.ApiKeyUpdate, team_id: str | None) -> Call[t.ApiKey]:
    mask = update.field_mask()
    if not mask:
        raise ValueError("an update needs at least one field set")
    api_key = update.api_key()
    if team_id is None:
        path = f"/auth/api-keys/{_seg(api_key_id)}"
    else:  # the seed document's form: the key travels in the body
        path = f"/auth/teams/{_seg(team_id)}/api-keys"
        api_key = {"apiKeyId": api_key_id, **api_key}
    return Call(
        "PUT",
        path,
        t.ApiKey,
        idempotent=True,  # setting fields to values: sending it twice lands in the same state
        body={"apiKey": api_key, "fieldMask": mask},
    )


def rotate_api_key(
    api_key_id: str, expire_time: datetime | None, old_secret_expire_time: datetime | None
) -> Call[t.ApiKey]:
    body: dict[str, Any] = {}
    if expire_time is not None:
        body["expireTime"] = t.rfc3339(expire_time)
    if old_secret_expire_time is not None:
        body["oldSecretExpireTime"] = t.rfc3339(old_secret_expire_time)
    return Call(
        "POST",
        f"/auth/api-keys/{_seg(api_key_id)}/rotate",
        t.ApiKey,
        idempotent=False,  # a resend would mint a second secret and cut the first one short
        body=body,
    )


def delete_api_key(api_key_id: str) -> Call[Empty]:
    return Call("DELETE", f"/auth/api-keys/{_seg(api_key_id)}", Empty, idempotent=True)


def propagation(api_key_id: str) -> Call[t.Propagation]:
    return Call(
        "GET", f"/auth/api-keys/{_seg(api_key_id)}/propagation", t.Propagation, idempotent=True
    )


def list_models(team_id: str) -> Call[t.ModelCatalog]:
    return Call("GET", f"/auth/teams/{_seg(team_id)}/models", t.ModelCatalog, idempotent=True)


def list_endpoint_acls(team_id: str) -> Call[t.EndpointAcls]:
    return Call("GET", f"/auth/teams/{_seg(team_id)}/endpoints", t.EndpointAcls, idempotent=True)


def validate_management_key() -> Call[t.ManagementKey]:
    return Call("GET", "/auth/management-keys/validation", t.ManagementKey, idempotent=True)


def list_audit_events(
    team_id: str,
    page_size: int | None,
    token: str | None,
    time_from: datetime | None,
    time_to: datetime | None,
    query: str | None,
    user_id: str | None,
    descending: bool,
) -> Call[t.AuditEventPage]:
    params: list[tuple[str, str]] = []
    if page_size is not None:
        params.append(("pageSize", str(page_size)))
    if token:
        params.append(("pageToken", token))
    if time_from is not None:
        params.append(("eventTimeFrom", t.rfc3339(time_from)))
    if time_to is not None:
        params.append(("eventTimeTo", t.rfc3339(time_to)))
    if query:
        params.append(("eventFilter.query", query))
    if user_id:
        params.append(("eventFilter.userId", user_id))
    params.append(("orderBy", "TIME_DESCENDING" if descending else "TIME_ASCENDING"))
    return Call(
        "GET",
        f"/audit/teams/{_seg(team_id)}/events",
        t.AuditEventPage,
        idempotent=True,
        params=params,
    )


def usage(team_id: str, request: t.AnalyticsRequest) -> Call[t.Usage]:
    return Call(
        "POST",
        f"/v1/billing/teams/{_seg(team_id)}/usage",
        t.Usage,
        idempotent=True,  # a read
        body={"analyticsRequest": msgspec.to_builtins(request)},
    )


def get_spending_limits(team_id: str) -> Call[t.SpendingLimitsAnswer]:
    return Call(
        "GET",
        f"/v1/billing/teams/{_seg(team_id)}/postpaid/spending-limits",
        t.SpendingLimitsAnswer,
        idempotent=True,
    )


def set_spending_limit(team_id: str, cents: int) -> Call[t.SetSpendingLimitAnswer]:
    return Call(
        "POST",
        f"/v1/billing/teams/{_seg(team_id)}/postpaid/spending-limits",
        t.SetSpendingLimitAnswer,
        idempotent=True,  # sets a value
        body={"desiredSoftSpendingLimit": {"val": str(cents)}},
    )
