"""The Management API's rules that no JSON Schema can state, told to schemathesis.

Loaded through ``SCHEMATHESIS_HOOKS`` by ``test_openapi_truth``. Each hook touches only requests
schemathesis means to be valid (its positive mode), and only where a rule relates a value to
something outside the request: the clock, another field, an earlier answer. Everything else is
the schema's job, and the checks hold it to it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis
from schemathesis import GenerationMode

#: Page tokens come from a previous page's answer; a made-up one is refused whatever its shape.
PAGE_TOKENS = ("paginationToken", "pageToken")
#: RotateApiKey keeps the old secret alive at most this long.
MAX_GRACE = timedelta(days=7)
INT64_MAX = 2**63 - 1
MASKABLE = ("name", "aclStrings", "qps", "qpm", "tpm", "disabled", "expireTime", "budget")
#: GetUsage spans at most this many days.
MAX_RANGE = timedelta(days=3700)
#: Usage aggregations kept per whole request (keyplane.usage.query.EXTREME_AGGREGATIONS).
EXTREMES = ("AGGREGATION_MIN", "AGGREGATION_MAX")


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clamp_int64(value: object) -> None:
    """schemathesis compares with an int64 ``maximum`` in double precision, so it offers numbers
    just past 2^63-1 as valid ones; they are not, and the server says so. Put them back in range."""
    if isinstance(value, dict):
        for name, inner in value.items():
            if isinstance(inner, int | float) and not isinstance(inner, bool) and inner > INT64_MAX:
                value[name] = INT64_MAX
            else:
                _clamp_int64(inner)
    elif isinstance(value, list):
        for inner in value:
            _clamp_int64(inner)


def _mask_what_is_sent(method: str, body: dict[str, Any]) -> None:
    """UpdateApiKey reads only the fields its mask names, and ignores the others, whatever they
    hold. A field made invalid on purpose is one the mask must name for the server to read it."""
    key, mask = body.get("apiKey"), body.get("fieldMask")
    if method != "PUT" or not isinstance(key, dict):
        return
    paths = mask.get("paths") if isinstance(mask, dict) else mask
    if isinstance(paths, str):
        paths = [p.strip() for p in paths.split(",")]
    if not isinstance(paths, list) or not all(isinstance(p, str) and p in MASKABLE for p in paths):
        return  # the mask itself is what is invalid
    wider = [*paths, *(name for name in MASKABLE if name in key and name not in paths)]
    if isinstance(mask, dict):
        mask["paths"] = wider
    else:
        body["fieldMask"] = wider


def _mask_paths(mask: object) -> set[str]:
    if isinstance(mask, dict):
        mask = mask.get("paths")
    if isinstance(mask, str):
        return {p.strip() for p in mask.split(",")}
    if isinstance(mask, list):
        return {p for p in mask if isinstance(p, str)}
    return set()


def _extremes_without_unit_type(request: dict[str, Any]) -> None:
    """MIN and MAX are per whole request: with unit_type in groupBy or filters (another field)
    they are refused, so a valid request asks SUM there."""
    groups, filters = request.get("groupBy"), request.get("filters")
    named = (isinstance(groups, list) and "unit_type" in groups) or (
        isinstance(filters, list) and any(isinstance(f, str) and "unit_type" in f for f in filters)
    )
    values = request.get("values")
    if named and isinstance(values, list):
        for value in values:
            if isinstance(value, dict) and value.get("aggregation") in EXTREMES:
                value["aggregation"] = "AGGREGATION_SUM"


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.meta is None:
        return
    positive = case.meta.generation.mode == GenerationMode.POSITIVE
    if positive and case.query:
        for name in PAGE_TOKENS:
            case.query.pop(name, None)
    body = case.body
    if not isinstance(body, dict):
        return
    if not positive:
        _mask_what_is_sent(case.method, body)
        return
    _clamp_int64(body)
    path = case.operation.path
    if path.endswith("/rotate"):
        # The old secret may live at most 7 days from now.
        old = _instant(body.get("oldSecretExpireTime"))
        if old is not None and old > datetime.now(UTC) + MAX_GRACE - timedelta(minutes=1):
            body["oldSecretExpireTime"] = _stamp(datetime.now(UTC) + timedelta(hours=1))
    elif case.method == "PUT" and isinstance(body.get("apiKey"), dict):
        # A masked name is set, not cleared: a key always has one.
        if "name" in _mask_paths(body.get("fieldMask")) and body["apiKey"].get("name") is None:
            body["apiKey"]["name"] = "renamed"
    elif path.endswith("/usage"):
        # The range ends after it starts, and spans at most MAX_RANGE.
        request = body.get("analyticsRequest")
        span = request.get("timeRange") if isinstance(request, dict) else None
        if isinstance(span, dict):
            start, end = _instant(span.get("startTime")), _instant(span.get("endTime"))
            if start is not None and end is not None and not start < end <= start + MAX_RANGE:
                span["startTime"] = "2026-01-01T00:00:00Z"
                span["endTime"] = "2026-01-02T00:00:00Z"
        if isinstance(request, dict):
            _extremes_without_unit_type(request)
