"""The usage query against a brute-force sum over the records, on every engine (hypothesis)."""

from __future__ import annotations

import bisect
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from keyplane.catalog import Catalog
from keyplane.domain.errors import InvalidArgument
from keyplane.domain.timefmt import format_ts
from keyplane.services.context import Context
from keyplane.settings import Settings
from keyplane.usage import ingest, query, store
from keyplane.usage.record import COST_PER_USD, UsageRecord, status_class
from keyplane.usage.schema import (
    ALL_KEYS,
    SERIES_SLOTS,
    SERIES_SUMS,
    usage_days,
    usage_series,
)
from tests.support.usage import ingest_batch

CATALOG = Catalog(Settings())
BASE = datetime(2026, 3, 27, 18, 0, tzinfo=UTC)  # Europe/London leaves GMT two days later
SPAN = int(timedelta(days=4).total_seconds())
KEYS = ("k1", "k2", "k3")
MODELS = ("grok-4", "grok-3")
ENDPOINTS = ("chat", "sample")
STATUSES = (200, 403, 429, 500)
ZONES = ("Etc/GMT", "Europe/London", "Asia/Kolkata", "America/St_Johns")

record_strategy = st.builds(
    lambda offset, key, model, endpoint, status, p, c, images: UsageRecord(
        time_ms=int(BASE.timestamp() * 1000) + offset,
        team_id="",
        api_key_id=key,
        model=model,
        endpoint=endpoint,
        status=status,
        prompt_tokens=p,
        completion_tokens=c,
        cost=p * 2000 + c * 10000 + images * 700_000_000,
        completion_cost=c * 10000,
        image_cost=images * 700_000_000,
    ),
    st.integers(0, SPAN * 1000 - 1),
    st.sampled_from(KEYS),
    st.sampled_from(MODELS),
    st.sampled_from(ENDPOINTS),
    st.sampled_from(STATUSES),
    st.integers(0, 5000),
    st.integers(0, 5000),
    st.integers(0, 2),
)
filter_strategy = st.one_of(
    st.tuples(st.just("api_key_id"), st.sampled_from(KEYS)),
    st.tuples(st.just("model"), st.sampled_from(MODELS)),
    st.tuples(st.just("endpoint"), st.sampled_from(ENDPOINTS)),
    st.tuples(st.just("status"), st.sampled_from(query.STATUS_CLASSES)),
    st.tuples(st.just("cluster"), st.sampled_from(("us-east-1", "eu-west-1"))),
    st.tuples(st.just("unit_type"), st.sampled_from(query.UNIT_TYPES)),
).flatmap(lambda fv: st.sampled_from([f"{fv[0]}:{fv[1]}", f"NOT {fv[0]}:{fv[1]}"]))


def _local(moment: datetime, zone: str) -> str:
    from zoneinfo import ZoneInfo

    return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")


def _values(aggregations: tuple[str, ...]) -> st.SearchStrategy[list[dict[str, str]]]:
    return st.lists(
        st.tuples(st.sampled_from(query.VALUES), st.sampled_from(aggregations)),
        min_size=1,
        max_size=3,
    ).map(lambda pairs: [{"name": n, "aggregation": a} for n, a in pairs])


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    zone = draw(st.sampled_from(ZONES))
    unit = draw(st.sampled_from(query.TIME_UNITS))
    start_min = draw(st.integers(-60, SPAN // 60))
    length = draw(st.integers(1, SPAN // 60 + 120))
    if unit == "TIME_UNIT_MINUTE":
        length = min(length, 600)
    start = BASE + timedelta(minutes=start_min)
    group_by = draw(st.lists(st.sampled_from(query.GROUPS), max_size=2, unique=True))
    filters = draw(st.lists(filter_strategy, max_size=2))
    by_unit = "unit_type" in group_by or any("unit_type:" in f for f in filters)
    # MIN/MAX are per whole request: refused with unit_type (test_extremes_refuse_unit_type).
    aggregations = query.AGGREGATIONS[:3] if by_unit else query.AGGREGATIONS
    return {
        "analyticsRequest": {
            "timeRange": {
                "startTime": _local(start, zone),
                "endTime": _local(start + timedelta(minutes=length), zone),
                "timezone": zone,
            },
            "timeUnit": unit,
            "values": draw(_values(aggregations)),
            "groupBy": group_by,
            "filters": filters,
        }
    }


def _unit_share(r: UsageRecord, unit: str | None) -> tuple[int, int, int]:
    """(prompt tokens, completion tokens, cost) of ``r`` billed for ``unit`` (None: all)."""
    prompt_cost = r.cost - r.completion_cost - r.image_cost
    return {
        None: (r.prompt_tokens, r.completion_tokens, r.cost),
        "prompt_text_tokens": (r.prompt_tokens, 0, prompt_cost),
        "completion_text_tokens": (0, r.completion_tokens, r.completion_cost),
        "images": (0, 0, r.image_cost),
    }[unit]


def brute_force(
    records: list[tuple[UsageRecord, str]], q: query.UsageQuery
) -> dict[tuple[str, ...], list[list[float]]]:
    """Per group, per bucket, the asked values, straight from the records: every request's own
    values kept, so SUM, COUNT, AVG, MIN and MAX are computed as their definitions say."""
    edges, _ = query.bucket_edges(q)
    epochs = [int(e.timestamp()) for e in edges]
    lo = int(q.start.timestamp()) // 60 * 60
    hi = epochs[-1] + (-epochs[-1]) % 60
    n = len(edges) - 1
    unit_filters = [f for f in q.filters if f.field == "unit_type"]
    grouped_units = "unit_type" in q.group_by
    units: list[str | None] = (
        [None]
        if not grouped_units and not unit_filters
        else [u for u in query.UNIT_TYPES if all((u == f.value) != f.negated for f in unit_filters)]
    )
    # Per group, per bucket: the requests' (requests, prompt, completion, cost) shares.
    out: dict[tuple[str, ...], list[list[tuple[int, int, int, int]]]] = {}
    for r, cluster in records:
        minute = r.time_ms // 60000 * 60
        if not lo <= minute < hi:
            continue
        fields = {
            "api_key_id": r.api_key_id,
            "model": r.model,
            "cluster": cluster,
            "endpoint": r.endpoint,
            "status": status_class(r.status),
            "description": f"{query.ENDPOINT_LABELS[r.endpoint]} {r.model}",
        }
        if any(
            (fields[f.field] == f.value) == f.negated for f in q.filters if f.field != "unit_type"
        ):
            continue
        index = min(max(bisect.bisect_right(epochs, minute) - 1, 0), n - 1)
        if grouped_units:
            for unit in units:
                fields["unit_type"] = unit or ""
                group = tuple(fields[g] for g in q.group_by)
                buckets = out.setdefault(group, [[] for _ in range(n)])
                buckets[index].append((1, *_unit_share(r, unit)))
        elif units:
            group = tuple(fields[g] for g in q.group_by)
            shares = [_unit_share(r, u) for u in units]
            prompt, completion, cost = (sum(s[i] for s in shares) for i in range(3))
            out.setdefault(group, [[] for _ in range(n)])[index].append(
                (1, prompt, completion, cost)
            )
    if not q.group_by and not out:
        out[()] = [[] for _ in range(n)]
    return {
        g: [[_value(v, requests) for v in q.values] for requests in buckets]
        for g, buckets in out.items()
    }


def _value(v: query.Value, requests: list[tuple[int, int, int, int]]) -> float:
    columns: dict[str, list[float]] = {
        "requests": [1.0 for _ in requests],
        "prompt_tokens": [p for _, p, _, _ in requests],
        "completion_tokens": [c for _, _, c, _ in requests],
        "total_tokens": [p + c for _, p, c, _ in requests],
        "usd": [cost / COST_PER_USD for _, _, _, cost in requests],
    }
    per_request = columns[v.name]
    if v.aggregation == "AGGREGATION_COUNT":
        return len(requests)
    if v.aggregation == "AGGREGATION_AVG":
        return sum(per_request) / len(requests) if requests else 0.0
    if v.aggregation == "AGGREGATION_MIN":
        return min(per_request, default=0)
    if v.aggregation == "AGGREGATION_MAX":
        return max(per_request, default=0)
    return sum(per_request)


def _examples(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


#: Records of the team (each with its cluster) and another team's, and the fold mark's minute.
_INGESTED = {
    "data": st.lists(
        st.tuples(record_strategy, st.sampled_from(("us-east-1", "eu-west-1"))), max_size=60
    ),
    "other": st.lists(record_strategy, max_size=10),
    "fold_at": st.integers(min_value=0, max_value=SPAN // 60),
}


def _check_against_brute_force(
    ctx: Context,
    data: list[tuple[UsageRecord, str]],
    other: list[UsageRecord],
    request: dict[str, Any],
    fold_at: int,
    shift_ms: int = 0,
) -> None:
    """Ingest ``data`` (and another team's ``other``), folded to ``fold_at`` minutes past
    ``BASE`` between the two clusters' batches, every record ``shift_ms`` later; ``request``'s
    answer equals the brute-force sum over the records."""
    team, intruder = str(uuid.uuid4()), str(uuid.uuid4())
    mine = [(_with_team(r, team, shift_ms), c) for r, c in data]
    for i, cluster in enumerate(("us-east-1", "eu-west-1")):
        batch = [r for r, c in mine if c == cluster]
        # Another team's, in the same batches.
        batch += [_with_team(r, intruder, shift_ms) for r in other]
        ingest_batch(ctx, batch, cluster=cluster)
        if i == 0:
            # Minutes folded into hours and days up to some point (the mark only moves on, over
            # examples): the query reads both sides of it, and the next batch's older records
            # arrive as a late backlog.
            ingest.fold(ctx, until=int(BASE.timestamp()) + shift_ms // 1000 + fold_at * 60)
    q = query.parse(request)
    with ctx.db.read() as conn:
        answer = query.run(conn, team, q, CATALOG)
    expected = brute_force(mine, q)
    got = {tuple(s.group): s.points for s in answer.series}
    assert set(got) == set(expected)
    for group, points in expected.items():
        assert len(got[group]) == len(points)  # dense: one point per bucket
        for got_point, want in zip(got[group], points, strict=True):
            assert got_point == pytest.approx(want)


def _with_team(r: UsageRecord, team: str, shift_ms: int = 0) -> UsageRecord:
    return msgspec.structs.replace(r, team_id=team, time_ms=r.time_ms + shift_ms)


#: Records two days later than ``BASE``: across 2026-04-01 00:00 UTC, where a 32-day period of
#: ``usage_series`` ends.
SERIES_SHIFT_MS = 2 * 86400 * 1000
SERIES_DAY = datetime(2026, 3, 30, tzinfo=UTC)


@st.composite
def by_key_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Requests the per-key series answers: by key, whole UTC days, sums, key filters only."""
    start = SERIES_DAY + timedelta(days=draw(st.integers(-2, 4)))
    end = start + timedelta(days=draw(st.integers(1, 8)))
    keys = st.tuples(st.sampled_from((*KEYS, "*")), st.booleans())
    aggregations = ("AGGREGATION_SUM", "AGGREGATION_COUNT", "AGGREGATION_AVG")
    zone = draw(st.sampled_from(("Etc/GMT", "UTC")))
    return {
        "analyticsRequest": {
            "timeRange": {
                "startTime": _local(start, zone),
                "endTime": _local(end, zone),
                "timezone": zone,
            },
            "timeUnit": draw(
                st.sampled_from(
                    (
                        "TIME_UNIT_DAY",
                        "TIME_UNIT_CALENDAR_WEEK",
                        "TIME_UNIT_MONTH",
                        "TIME_UNIT_NONE",
                    )
                )
            ),
            "values": draw(_values(aggregations)),
            "groupBy": ["api_key_id"],
            "filters": [
                f"{'NOT ' if no else ''}api_key_id:{key}"
                for key, no in draw(st.lists(keys, max_size=2))
            ],
        }
    }


@_examples(70)
@given(
    asked=st.one_of(
        requests().map(lambda r: (r, 0)), by_key_requests().map(lambda r: (r, SERIES_SHIFT_MS))
    ),
    **_INGESTED,
)
def test_the_query_equals_a_brute_force_sum(
    ctx: Context,
    data: list[tuple[UsageRecord, str]],
    other: list[UsageRecord],
    asked: tuple[dict[str, Any], int],
    fold_at: int,
) -> None:
    """Any request; and, as often, one answered from ``usage_series`` (and the minutes past the
    fold mark) over a period boundary, with late records added at ingest, after which the series
    holds what the days hold, also once retention drops days from the middle of a period."""
    request, shift_ms = asked
    _check_against_brute_force(ctx, data, other, request, fold_at, shift_ms)
    if not shift_ms:
        return
    q = query.parse(request)
    one_bucket = len(query.bucket_edges(q)[0]) == 2  # a total per key: SQL sums it
    assert (query._by_key_sums(q) is not None) != one_bucket  # else the series path was taken
    assert _series_cells(ctx) == _day_cells(ctx)
    cutoff = int(SERIES_DAY.timestamp()) + 3600  # days starting before it go
    with ctx.db.write() as conn:
        store.purge(conn, cutoffs={86400: cutoff}, spend_before=0, marks_before=0)
    assert _series_cells(ctx) == _day_cells(ctx)


Cells = dict[tuple[str, str, int], tuple[int, ...]]


def _day_cells(ctx: Context) -> Cells:
    """Per (team, key, day) the per-key ``usage_days`` sums of ``SERIES_SUMS`` (non-zero)."""
    d = usage_days
    sums = [func.sum(d.c[name]) for name in SERIES_SUMS]
    with ctx.db.read() as conn:
        rows = conn.execute(
            select(d.c.team_id, d.c.api_key_id, d.c.bucket, *sums)
            .where(d.c.api_key_id != ALL_KEYS)
            .group_by(d.c.team_id, d.c.api_key_id, d.c.bucket)
        ).all()
    cells = {(r[0], r[1], int(r[2])): tuple(int(v) for v in r[3:]) for r in rows}
    return {k: v for k, v in cells.items() if any(v)}


def _series_cells(ctx: Context) -> Cells:
    """The same, from ``usage_series``."""
    cells: Cells = {}
    with ctx.db.read() as conn:
        for row in conn.execute(select(usage_series)).mappings():
            for slot in range(SERIES_SLOTS):
                got = tuple(int(row[f"{name}_{slot}"]) for name in SERIES_SUMS)
                if any(got):
                    cells[(row["team_id"], row["api_key_id"], row["period"] + slot * 86400)] = got
    return cells


@pytest.mark.parametrize(
    ("zone", "unit", "start", "end", "first", "count"),
    [
        # London leaves GMT on 2026-03-29: that day has 23 hours; days still start at midnight.
        (
            "Europe/London",
            "TIME_UNIT_DAY",
            "2026-03-28 00:00:00",
            "2026-03-31 00:00:00",
            "2026-03-28T00:00:00.000000Z",
            3,
        ),
        (
            "Asia/Kolkata",
            "TIME_UNIT_HOUR",
            "2026-03-28 10:00:00",
            "2026-03-28 13:00:00",
            "2026-03-28T04:30:00.000000Z",
            3,
        ),
        (
            "Etc/GMT",
            "TIME_UNIT_MONTH",
            "2026-01-15 00:00:00",
            "2026-04-01 00:00:00",
            "2026-01-01T00:00:00.000000Z",
            3,
        ),
        (
            "Etc/GMT",
            "TIME_UNIT_CALENDAR_WEEK",
            "2026-03-04 00:00:00",
            "2026-03-16 00:00:00",
            "2026-03-02T00:00:00.000000Z",
            2,
        ),
    ],
)
def test_buckets_are_aligned_in_the_timezone(
    zone: str, unit: str, start: str, end: str, first: str, count: int
) -> None:
    q = query.parse(
        {
            "analyticsRequest": {
                "timeRange": {"startTime": start, "endTime": end, "timezone": zone},
                "timeUnit": unit,
            }
        }
    )
    edges, cut = query.bucket_edges(q)
    assert not cut
    assert len(edges) - 1 == count
    assert format_ts(edges[0]) == first


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {
            "analyticsRequest": {
                "timeRange": {"startTime": "2026-01-02 00:00:00", "endTime": "2026-01-01 00:00:00"}
            }
        },
        {
            "analyticsRequest": {
                "timeRange": {
                    "startTime": "2026-01-01 00:00:00",
                    "endTime": "2026-01-02 00:00:00",
                    "timezone": "Mars/Olympus",
                }
            }
        },
        {
            "analyticsRequest": {
                "timeRange": {"startTime": "2026-01-01 00:00:00", "endTime": "2026-01-02 00:00:00"},
                "groupBy": ["team_id"],
            }
        },
        {
            "analyticsRequest": {
                "timeRange": {"startTime": "2026-01-01 00:00:00", "endTime": "2026-01-02 00:00:00"},
                "filters": ["team_id:someone-else"],
            }
        },
    ],
)
def test_bad_requests_name_their_field(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        query.parse(bad)


@pytest.mark.parametrize("aggregation", query.EXTREME_AGGREGATIONS)
@pytest.mark.parametrize(
    "extra", [{"groupBy": ["unit_type"]}, {"filters": ["NOT unit_type:images"]}]
)
def test_extremes_refuse_unit_type(aggregation: str, extra: dict[str, Any]) -> None:
    """MIN and MAX are kept per whole request: a unit type's share of one has no extreme."""
    with pytest.raises(InvalidArgument) as refused:
        query.parse(
            {
                "analyticsRequest": {
                    "timeRange": {
                        "startTime": "2026-01-01 00:00:00",
                        "endTime": "2026-01-02 00:00:00",
                    },
                    "values": [{"name": "usd", "aggregation": aggregation}],
                    **extra,
                }
            }
        )
    assert refused.value.field == "values.aggregation"
