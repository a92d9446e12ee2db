"""The usage analytics query (the hosted ``POST /v1/billing/teams/{teamId}/usage``).

A request names a time range read in an IANA timezone, a bucket size, the values wanted, how to
group and what to filter. The engine picks the coarsest rollup table (day, hour or minute) whose
resolution lines up with every bucket edge, sums in SQL grouped by that table's buckets and the
group-by columns, then folds the rows into the answer's buckets: dense, zeros included.

Caps (``limitReached: true`` when an answer was cut): ``MAX_SERIES`` series (the largest by the
first value asked are kept) and ``MAX_POINTS`` buckets per series (the earliest are kept).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import itertools
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    func,
    literal,
    literal_column,
    not_,
    select,
    text,
    union_all,
)

from keyplane.catalog import Catalog
from keyplane.domain.errors import InvalidArgument
from keyplane.domain.timefmt import format_ts, parse_ts
from keyplane.storage import tables as t
from keyplane.usage.record import COST_PER_USD, status_class
from keyplane.usage.schema import (
    ALL_KEYS,
    FOLD,
    ROLLUPS,
    SERIES_PERIOD,
    SERIES_SLOTS,
    usage_days,
    usage_minutes,
)
from keyplane.usage.store import folded_to_expression

#: ``ALL_KEYS`` as a literal in the SQL text (see ``_statement``).
_ALL_KEYS: ColumnElement[Any] = literal_column(f"'{ALL_KEYS}'")
MAX_SERIES = 1000
MAX_POINTS = 1500
MAX_VALUES = 8
MAX_FILTERS = 32
#: The longest range a query may span.
MAX_RANGE = timedelta(days=3700)

TIME_UNITS = (
    "TIME_UNIT_MINUTE",
    "TIME_UNIT_QUARTER_HOUR",
    "TIME_UNIT_HOUR",
    "TIME_UNIT_DAY",
    "TIME_UNIT_CALENDAR_WEEK",
    "TIME_UNIT_MONTH",
    "TIME_UNIT_NONE",
)
_FIXED = {"TIME_UNIT_MINUTE": 60, "TIME_UNIT_QUARTER_HOUR": 900, "TIME_UNIT_HOUR": 3600}
VALUES = ("usd", "requests", "prompt_tokens", "completion_tokens", "total_tokens")
AGGREGATIONS = (
    "AGGREGATION_SUM",
    "AGGREGATION_COUNT",
    "AGGREGATION_AVG",
    "AGGREGATION_MIN",
    "AGGREGATION_MAX",
)
#: Per request: the smallest or largest single request in the bucket.
EXTREME_AGGREGATIONS = ("AGGREGATION_MIN", "AGGREGATION_MAX")
GROUPS = ("description", "api_key_id", "model", "cluster", "endpoint", "status", "unit_type")
STATUS_CLASSES = ("2xx", "4xx", "429", "5xx")
#: What a request is billed for, one catalog price each: ``unit_type`` splits a request's tokens
#: and cost by these (``requests`` counts the request under each).
UNIT_TYPES = ("prompt_text_tokens", "completion_text_tokens", "images")
#: How ``description`` names an endpoint, as the hosted console does ("Chat grok-3").
ENDPOINT_LABELS = {
    "chat": "Chat",
    "sample": "Completions",
    "image": "Image",
    "embed": "Embeddings",
    "models": "Models",
    "tokenize": "Tokenize",
}
_HOSTED_TIME = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True, slots=True)
class Value:
    name: str
    aggregation: str


@dataclass(frozen=True, slots=True)
class Filter:
    field: str
    value: str
    negated: bool


@dataclass(frozen=True, slots=True)
class UsageQuery:
    start: datetime
    end: datetime
    zone: ZoneInfo
    time_unit: str
    values: tuple[Value, ...]
    group_by: tuple[str, ...]
    filters: tuple[Filter, ...]


# -- parsing ------------------------------------------------------------------------------------


def _time(value: object, zone: ZoneInfo, field: str) -> datetime:
    if not isinstance(value, str) or not 10 <= len(value) <= 64:
        raise InvalidArgument("must be a time like 2026-12-01 00:00:00", field=field)
    try:
        return datetime.strptime(value.strip(), _HOSTED_TIME).replace(tzinfo=zone).astimezone(UTC)
    except ValueError:
        return parse_ts(value, field=field)


def _zone(value: object) -> ZoneInfo:
    if value is None or value == "":
        return ZoneInfo("Etc/GMT")
    if not isinstance(value, str) or len(value) > 64 or ".." in value or value.startswith("/"):
        raise InvalidArgument("must be an IANA timezone name", field="timeRange.timezone")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(
            f"unknown timezone {value!r} (an IANA name such as Etc/GMT)",
            field="timeRange.timezone",
        ) from None


def _list(body: Mapping[str, Any], name: str, limit: int) -> list[Any]:
    value = body.get(name) or []
    if not isinstance(value, list) or len(value) > limit:
        raise InvalidArgument(f"must be a list of at most {limit}", field=name)
    return value


def parse(body: Mapping[str, Any]) -> UsageQuery:
    request = body.get("analyticsRequest", body.get("analytics_request"))
    if not isinstance(request, dict):
        raise InvalidArgument("is required", field="analyticsRequest")
    time_range = request.get("timeRange", request.get("time_range"))
    if not isinstance(time_range, dict):
        raise InvalidArgument("is required", field="timeRange")
    zone = _zone(time_range.get("timezone"))
    start = _time(time_range.get("startTime"), zone, "timeRange.startTime")
    end = _time(time_range.get("endTime"), zone, "timeRange.endTime")
    if end <= start:
        raise InvalidArgument("must be after startTime", field="timeRange.endTime")
    if end - start > MAX_RANGE:
        raise InvalidArgument(f"may span at most {MAX_RANGE.days} days", field="timeRange")
    unit = request.get("timeUnit", request.get("time_unit")) or "TIME_UNIT_NONE"
    if unit not in TIME_UNITS:
        raise InvalidArgument(f"must be one of {', '.join(TIME_UNITS)}", field="timeUnit")
    values: list[Value] = []
    for item in _list(request, "values", MAX_VALUES):
        if not isinstance(item, dict) or item.get("name") not in VALUES:
            raise InvalidArgument(f"each name is one of {', '.join(VALUES)}", field="values")
        aggregation = item.get("aggregation") or "AGGREGATION_SUM"
        if aggregation not in AGGREGATIONS:
            raise InvalidArgument(
                f"aggregation is one of {', '.join(AGGREGATIONS)}", field="values.aggregation"
            )
        values.append(Value(item["name"], aggregation))
    if not values:
        values = [Value("usd", "AGGREGATION_SUM")]
    group_by = _list(request, "groupBy", len(GROUPS))
    for name in group_by:
        if name not in GROUPS:
            raise InvalidArgument(f"each is one of {', '.join(GROUPS)}", field="groupBy")
    if len(set(group_by)) != len(group_by):
        raise InvalidArgument("names a field twice", field="groupBy")
    filters = [_filter(text) for text in _list(request, "filters", MAX_FILTERS)]
    by_unit = "unit_type" in group_by or any(f.field == "unit_type" for f in filters)
    if by_unit and any(v.aggregation in EXTREME_AGGREGATIONS for v in values):
        raise InvalidArgument(
            "AGGREGATION_MIN and AGGREGATION_MAX are kept per whole request, not per unit type: "
            "drop unit_type from groupBy and filters to use them",
            field="values.aggregation",
        )
    return UsageQuery(start, end, zone, unit, tuple(values), tuple(group_by), tuple(filters))


def _filter(text: object) -> Filter:
    if not isinstance(text, str) or not 3 <= len(text) <= 300:
        raise InvalidArgument("each filter is a string like model:grok-4", field="filters")
    body = text.strip()
    negated = body[:4].upper() == "NOT "
    if negated:
        body = body[4:].strip()
    field, sep, value = body.partition(":")
    field = field.strip()
    if not sep or field not in GROUPS or not value.strip():
        raise InvalidArgument(
            f"{text!r}: expected (NOT) field:value with field one of {', '.join(GROUPS)}",
            field="filters",
        )
    value = value.strip()
    if field == "status" and value not in STATUS_CLASSES:
        raise InvalidArgument(f"status is one of {', '.join(STATUS_CLASSES)}", field="filters")
    if field == "unit_type" and value not in UNIT_TYPES:
        raise InvalidArgument(f"unit_type is one of {', '.join(UNIT_TYPES)}", field="filters")
    return Filter(field, value, negated)


# -- buckets ------------------------------------------------------------------------------------


def bucket_edges(q: UsageQuery) -> tuple[list[datetime], bool]:
    """The answer's bucket starts (UTC), plus the range's end; and whether it was cut."""
    if q.time_unit == "TIME_UNIT_NONE":
        return [q.start, q.end], False
    edges: list[datetime] = []
    if q.time_unit in _FIXED:
        width = _FIXED[q.time_unit]
        offset = int((q.start.astimezone(q.zone).utcoffset() or timedelta()).total_seconds())
        epoch = int(q.start.timestamp())
        first = epoch - (epoch + offset) % width
        moment = first
        end = q.end.timestamp()
        while moment < end and len(edges) < MAX_POINTS:
            edges.append(datetime.fromtimestamp(moment, UTC))
            moment += width
        cut = moment < end
    else:
        local = q.start.astimezone(q.zone).replace(tzinfo=None)
        day = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if q.time_unit == "TIME_UNIT_CALENDAR_WEEK":
            day -= timedelta(days=day.weekday())
        elif q.time_unit == "TIME_UNIT_MONTH":
            day = day.replace(day=1)
        moment_utc = day.replace(tzinfo=q.zone).astimezone(UTC)
        while moment_utc < q.end and len(edges) < MAX_POINTS:
            edges.append(moment_utc)
            day = _next_local(day, q.time_unit)
            moment_utc = day.replace(tzinfo=q.zone).astimezone(UTC)
        cut = moment_utc < q.end
    # Clip: the first bucket starts at startTime at the earliest, the last ends at endTime.
    stop = edges[-1] if cut else q.end
    edges.append(stop)
    return edges, cut


def _next_local(day: datetime, unit: str) -> datetime:
    if unit == "TIME_UNIT_DAY":
        return day + timedelta(days=1)
    if unit == "TIME_UNIT_CALENDAR_WEEK":
        return day + timedelta(days=7)
    return (
        day.replace(year=day.year + 1, month=1)
        if day.month == 12
        else day.replace(month=day.month + 1)
    )


def _resolution(moments: Sequence[int]) -> Any:
    """The coarsest rollup table every moment (epoch seconds) is a bucket edge of."""
    for width, table in reversed(ROLLUPS):
        if all(m % width == 0 for m in moments):
            return table
    return ROLLUPS[0][1]


# -- running ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Series:
    group: list[str]
    labels: list[str]
    #: One list per value asked (in the order asked), of a cell per bucket: how the answer is
    #: built and encoded, column by column.
    columns: list[list[float | int]]

    @property
    def points(self) -> list[list[float | int]]:
        """One list of values (in the order asked) per bucket."""
        return [list(p) for p in zip(*self.columns, strict=True)]


@dataclass(frozen=True, slots=True)
class Answer:
    timestamps: list[datetime]
    series: list[Series]
    limit_reached: bool


def _condition(table: Any, f: Filter, catalog: Catalog) -> ColumnElement[bool]:
    if f.field == "status":
        s = table.c.status
        conditions = {
            "2xx": s < 400,
            "429": s == 429,
            "4xx": and_(s >= 400, s < 500, s != 429),
            "5xx": s >= 500,
        }
        condition: ColumnElement[bool] = conditions[f.value]
    elif f.field == "description":
        label, _, model = f.value.partition(" ")
        endpoints = [e for e, text in ENDPOINT_LABELS.items() if text == label]
        condition = and_(
            table.c.endpoint.in_(endpoints), table.c.model == _canonical(model, catalog)
        )
    elif f.field == "model":
        condition = table.c.model == _canonical(f.value, catalog)
    else:
        condition = table.c[f.field] == f.value
    return not_(condition) if f.negated else condition


def _canonical(name: str, catalog: Catalog) -> str:
    model = catalog.resolve(name)
    return model.name if model is not None else name


_COLUMNS = {
    "api_key_id": ("api_key_id",),
    "model": ("model",),
    "cluster": ("cluster",),
    "endpoint": ("endpoint",),
    "status": ("status",),
    "description": ("endpoint", "model"),
    "unit_type": (),  # not a column: a branch of the query per unit type
}

#: A measure the SQL returns per row: (fold, value) with fold ``sum``, ``min`` or ``max``.
_Measure = tuple[str, str]


def _measures(values: Sequence[Value]) -> list[_Measure]:
    """The measures the asked values are computed from, each once."""
    out: list[_Measure] = []
    for v in values:
        if v.aggregation == "AGGREGATION_COUNT":
            needed = [("sum", "requests")]
        elif v.aggregation == "AGGREGATION_AVG":
            needed = [("sum", v.name), ("sum", "requests")]
        elif v.aggregation in EXTREME_AGGREGATIONS and v.name == "requests":
            needed = [("sum", "requests")]  # one per request: 1 when there is any
        elif v.aggregation in EXTREME_AGGREGATIONS:
            needed = [("min" if v.aggregation == "AGGREGATION_MIN" else "max", v.name)]
        else:
            needed = [("sum", v.name)]
        out += [m for m in needed if m not in out]
    return out


def _unit_expression(table: Any, value: str, unit: str | None) -> Any:
    """A row's ``value`` (a column expression) for ``unit`` (None: the whole request)."""
    c = table.c
    if value == "requests":
        return c.requests
    if value == "usd":
        if unit is None:
            return c.cost
        return {
            "prompt_text_tokens": c.cost - c.completion_cost - c.image_cost,
            "completion_text_tokens": c.completion_cost,
            "images": c.image_cost,
        }[unit]
    prompt = unit in (None, "prompt_text_tokens")
    completion = unit in (None, "completion_text_tokens")
    if value == "prompt_tokens":
        return c.prompt_tokens if prompt else literal(0)
    if value == "completion_tokens":
        return c.completion_tokens if completion else literal(0)
    if prompt and completion:
        return c.prompt_tokens + c.completion_tokens
    if prompt:
        return c.prompt_tokens
    return c.completion_tokens if completion else literal(0)


def _units(q: UsageQuery) -> list[str | None]:
    """The query's unit-type branches: ``[None]`` (whole requests) unless it names unit_type."""
    if "unit_type" not in q.group_by and not any(f.field == "unit_type" for f in q.filters):
        return [None]
    return [
        u
        for u in UNIT_TYPES
        if all((u == f.value) != f.negated for f in q.filters if f.field == "unit_type")
    ]


def _range(q: UsageQuery) -> tuple[list[datetime], bool, list[int], int, int]:
    """The answer's bucket edges, whether cut, as epochs, and the range read in whole minutes
    (the finest rollup): ``[lo, hi)``."""
    edges, cut = bucket_edges(q)
    epochs = [int(e.timestamp()) for e in edges]
    lo = int(q.start.timestamp())
    lo -= lo % 60
    hi = epochs[-1] + (-epochs[-1]) % 60
    return edges, cut, epochs, lo, hi


def _statement(team_id: str, q: UsageQuery, catalog: Catalog) -> Any:
    """The one SQL statement that answers ``q`` (None: it cannot match a row)."""
    _, _, epochs, lo, hi = _range(q)
    table = _resolution([lo, hi, *epochs[1:-1]])
    columns = sorted({c for g in q.group_by for c in _COLUMNS[g]})
    by_key = "api_key_id" in q.group_by or any(f.field == "api_key_id" for f in q.filters)
    n = len(epochs) - 1
    grouped_units = "unit_type" in q.group_by
    # Hours and days hold the minutes before the fold mark; the minutes from it on are read
    # from the minute table, each placed in its hour or day (see ``schema.usage_fold``).
    # Each side gets one lower and one upper bound an index may use: the range for the coarse
    # table, the mark and the range's end for the minutes (the minute table may hold weeks
    # before the mark). The other bound is ``bucket + 0``, which no index serves: SQLite would
    # otherwise weigh three bounds and could leave the (team, key, bucket) index for the team's
    # totals (measured: 15 -> 257 ms CPU for 30 days by hour).
    sources: list[tuple[Any, Any, list[ColumnElement[bool]]]] = [
        (table, table.c.bucket, [table.c.bucket >= lo, table.c.bucket < hi])
    ]
    if table is not usage_minutes:
        mark = folded_to_expression()
        width = next(w for w, t in ROLLUPS if t is table)
        c, m = table.c.bucket, usage_minutes.c.bucket
        sources = [
            (table, c, [c >= lo, c < hi, c + 0 < mark]),
            (usage_minutes, m - m % width, [m >= mark, m < hi, m + 0 >= lo]),
        ]
    branches = []
    for source, bucket, bounds in sources:
        # One answer bucket (TIME_UNIT_NONE, or a range inside one bucket): no need to group by
        # the table's buckets, so a month of daily rows per key comes back as one row per key.
        bucket_column = literal(epochs[0]) if n == 1 else bucket
        conditions = [
            source.c.team_id == team_id,
            *_key_conditions(source, q, by_key=by_key),
            *bounds,
            *(_condition(source, f, catalog) for f in q.filters if f.field != "unit_type"),
        ]
        for i, unit in enumerate(_units(q)):
            selected: list[Any] = [bucket_column, *(source.c[c] for c in columns)]
            if grouped_units:
                selected.append(literal(unit))
            for fold, value in _measures(q.values):
                if fold == "sum":
                    # Without unit_type groups, a request counts once over the unit branches.
                    once = value == "requests" and i > 0 and not grouped_units
                    selected.append(
                        func.sum(literal(0) if once else _unit_expression(source, value, unit))
                    )
                else:
                    column = "cost" if value == "usd" else value
                    selected.append(getattr(func, fold)(source.c[f"{fold}_{column}"]))
            branch = (
                select(*selected)
                .where(*conditions)
                .group_by(*([] if n == 1 else [bucket]), *(source.c[c] for c in columns))
            )
            branches.append(branch)
    if not branches:
        return None
    return branches[0] if len(branches) == 1 else union_all(*branches)


def _key_conditions(source: Any, q: UsageQuery, *, by_key: bool) -> list[ColumnElement[bool]]:
    """The per-key rows (by key) or the team's totals (see ``schema.ALL_KEYS``). Every key's rows
    are selected by the partial index's own condition, the constant written out (a database uses
    ``ix_*_covering`` only where it sees that the query implies its condition); one key's by its
    filter alone, so that index, which would read every key's rows, is not considered."""
    column = source.c.api_key_id
    if not by_key:
        return [column == ALL_KEYS]
    wanted = [f.value for f in q.filters if f.field == "api_key_id" and not f.negated]
    if not wanted:
        return [column != _ALL_KEYS]
    return [column != ALL_KEYS] if ALL_KEYS in wanted else []


def plan(conn: Connection, team_id: str, q: UsageQuery, catalog: Catalog) -> list[str]:
    """How the database runs ``q`` (``EXPLAIN QUERY PLAN`` / ``EXPLAIN``), for benchmarks."""
    postgres = conn.dialect.name == "postgresql"
    if _by_key_sums(q) is not None:
        sql, params = _series_statement(team_id, q)
        explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
        return [r[0 if postgres else -1] for r in conn.execute(text(explain + sql), params)]
    statement = _statement(team_id, q, catalog)
    if statement is None:
        return []
    compiled = statement.compile(conn, compile_kwargs={"literal_binds": True})
    if postgres:
        return [r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}")]
    return [r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")]


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector off while a large answer is built and encoded. A 1,000-series
    answer allocates ~100,000 small containers, none in a cycle (reference counting frees them);
    the collector's passes over the whole heap that these allocations trigger cost more than the
    work itself (measured: 313 → 123 ms CPU per 1,000 × 31 answer). Process-wide, so only the
    thread that turned it off turns it back on."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def run(conn: Connection, team_id: str, q: UsageQuery, catalog: Catalog) -> Answer:
    edges, cut, epochs, lo, hi = _range(q)
    n = len(edges) - 1
    columns = sorted({c for g in q.group_by for c in _COLUMNS[g]})
    measures = _measures(q.values)
    grouped_units = "unit_type" in q.group_by
    if _by_key_sums(q) is not None:
        # Every key by day (or week, month, all of it): from the per-key series (see
        # ``schema.usage_series``), a row per key and 32 days.
        sql, params = _series_statement(team_id, q)
        result = conn.execute(text(sql), params)
        try:
            found = result.cursor.fetchall()
        finally:
            result.close()
        groups = _assemble_series(found, len(measures), epochs, lo, hi)
        return _answer(conn, team_id, q, edges, cut, groups)
    statement = _statement(team_id, q, catalog)
    rows: Sequence[Any] = []
    if statement is not None:
        # The driver's rows as they come (tuples), without a Row object each: up to 31,000 here.
        result = conn.execute(statement)
        try:
            rows = result.cursor.fetchall()
        finally:
            result.close()
    base = 1 + len(columns) + (1 if grouped_units else 0)
    if not columns and n == 1:  # no GROUP BY: one row even over no rows, of NULL aggregates
        rows = [r for r in rows if any(v is not None for v in r[base:])]  # over no rows at all
    groups = _assemble(rows, q.group_by, columns, base, [f for f, _ in measures], epochs)
    if not q.group_by and not groups:
        groups[()] = [[0 if f == "sum" else None] * n for f, _ in measures]
    return _answer(conn, team_id, q, edges, cut, groups)


def _answer(
    conn: Connection,
    team_id: str,
    q: UsageQuery,
    edges: list[datetime],
    cut: bool,
    groups: dict[tuple[str, ...], list[list[Any]]],
) -> Answer:
    """The answer from the measures' arrays per group: values, labels, the series cap."""
    measures = _measures(q.values)
    names: dict[str, str] = {}
    if "api_key_id" in q.group_by:
        at = q.group_by.index("api_key_id")
        names = _key_names(conn, team_id, {key[at] for key in groups})
    series = [
        Series(
            group=list(key),
            labels=[_label(g, v, names) for g, v in zip(q.group_by, key, strict=True)],
            columns=[_values(v, measures, arrays) for v in q.values],
        )
        for key, arrays in groups.items()
    ]
    limited = cut
    if len(series) > MAX_SERIES:
        limited = True
        series.sort(key=lambda s: -sum(float(x) for x in s.columns[0]))
        series = series[:MAX_SERIES]
    series.sort(key=lambda s: s.group)
    return Answer(edges[:-1], series, limited)


def _assemble(
    rows: Sequence[Sequence[Any]],
    group_by: Sequence[str],
    columns: list[str],
    base: int,
    folds: list[str],
    epochs: list[int],
) -> dict[tuple[str, ...], list[list[Any]]]:
    """Fold the result rows into, per group, one array per measure with a cell per bucket.
    Column-wise where it can (an answer may be 1,000 series × 31 days of rows)."""
    n = len(epochs) - 1
    groups: dict[tuple[str, ...], list[list[Any]]] = {}
    if not rows:
        return groups
    # Most rows start an answer bucket exactly (the table was chosen so): a dict finds those.
    exact = {edge: i for i, edge in enumerate(epochs[:-1])}
    if folds == ["sum"] and len(group_by) == 1 and group_by[0] in _TEXT_GROUPS and base == 2:
        return _assemble_sums(rows, exact, epochs)
    cols = list(zip(*rows, strict=True))
    indexes: list[int] = [exact.get(b, -1) for b in cols[0]]
    for i, index in enumerate(indexes):
        if index < 0:
            indexes[i] = max(0, min(bisect.bisect_right(epochs, cols[0][i]) - 1, n - 1))
    keys: list[tuple[str, ...]] = (
        list(zip(*(_group_values(g, columns, cols) for g in group_by), strict=True))
        if group_by
        else [()] * len(rows)
    )
    # int(): PostgreSQL sums BIGINTs as NUMERIC.
    measures = [
        col if all(type(v) is int for v in col) else [None if v is None else int(v) for v in col]
        for col in cols[base:]
    ]
    fresh = [0 if f == "sum" else None for f in folds]
    if folds == ["sum"]:  # the common shape: one summed value
        (values,) = measures
        for key, index, value in zip(keys, indexes, values, strict=True):
            arrays = groups.get(key)
            if arrays is None:
                arrays = groups[key] = [[0] * n]
            arrays[0][index] += value
        return groups
    for r, (key, index) in enumerate(zip(keys, indexes, strict=True)):
        arrays = groups.get(key)
        if arrays is None:
            arrays = groups[key] = [[f] * n for f in fresh]
        for j, fold in enumerate(folds):
            got = measures[j][r]
            if got is None:
                continue
            cells = arrays[j]
            have = cells[index]
            if fold == "sum":
                cells[index] = have + got
            elif have is None or (got < have if fold == "min" else got > have):
                cells[index] = got
    return groups


def _by_key_sums(q: UsageQuery) -> list[_Measure] | None:
    """The measures of ``q`` if it is answered from ``usage_series``: grouped by key alone,
    filtered by key at most, sums only (what the series holds), over whole UTC days."""
    if q.group_by != ("api_key_id",) or any(f.field != "api_key_id" for f in q.filters):
        return None
    measures = _measures(q.values)
    if any(fold != "sum" for fold, _ in measures):
        return None
    _, _, epochs, lo, hi = _range(q)
    # One bucket (a total per key): SQL sums each key's days itself, a row per key out
    # (measured: 26 against 29 ms of CPU from the series, 30 days of 1,000 keys).
    if len(epochs) == 2 or _resolution([lo, hi, *epochs[1:-1]]) is not usage_days:
        return None
    return measures


def _series_statement(team_id: str, q: UsageQuery) -> tuple[str, dict[str, Any]]:
    """The SQL (both dialects) and its parameters reading ``q``'s series: the series rows of the
    periods the range touches, and the minutes from the fold mark on, grouped by key and period
    into the same row shape. One statement: one snapshot of the mark and both sides of it."""
    _, _, _, lo, hi = _range(q)
    keys = tuple(f.negated for f in q.filters)
    sql = _series_sql(tuple(value for _, value in _measures(q.values)), keys)
    params: dict[str, Any] = {
        "team": team_id,
        "lo": lo,
        "hi": hi,
        "period": lo - lo % SERIES_PERIOD,
    }
    params.update({f"key{i}": f.value for i, f in enumerate(q.filters)})
    return sql, params


def _series_cell(value: str, suffix: str) -> str:
    column = "cost" if value == "usd" else value
    if column == "total_tokens":
        return f"(prompt_tokens{suffix} + completion_tokens{suffix})"
    return column + suffix


@functools.lru_cache(maxsize=64)
def _series_sql(values: tuple[str, ...], negated: tuple[bool, ...]) -> str:
    p = SERIES_PERIOD
    keys = "".join(f" AND api_key_id {'<>' if no else '='} :key{i}" for i, no in enumerate(negated))
    cells = ", ".join(_series_cell(v, f"_{slot}") for v in values for slot in range(SERIES_SLOTS))
    picks = ", ".join(
        f"CAST(sum(CASE WHEN (bucket % {p}) / 86400 = {slot} THEN {_series_cell(v, '')} "
        "ELSE 0 END) AS BIGINT)"
        for v in values
        for slot in range(SERIES_SLOTS)
    )
    mark = f"coalesce((SELECT folded_to FROM usage_fold WHERE name = '{FOLD}'), 0)"  # noqa: S608
    # Last, a bit per day on which the key made requests (its sums may all be 0): whether it is
    # in the answer. Cheaper in SQL than the 32 cells in Python. Every minute read is in range.
    days = " + ".join(
        f"CASE WHEN requests_{slot} <> 0 THEN {1 << slot} ELSE 0 END"
        for slot in range(SERIES_SLOTS)
    )
    # Names and numbers are this module's own; the team, range and keys are parameters.
    return (
        f"SELECT period, api_key_id, {cells}, {days} FROM usage_series "  # noqa: S608
        f"WHERE team_id = :team AND period >= :period AND period < :hi{keys} "
        f"UNION ALL SELECT bucket - bucket % {p}, api_key_id, {picks}, {(1 << SERIES_SLOTS) - 1} "
        "FROM usage_minutes "
        f"WHERE team_id = :team AND api_key_id <> '{ALL_KEYS}' AND bucket >= {mark} "
        f"AND bucket < :hi AND bucket + 0 >= :lo{keys} GROUP BY 1, 2"
    )


def _assemble_series(
    rows: Sequence[Sequence[Any]], width: int, epochs: list[int], lo: int, hi: int
) -> dict[tuple[str, ...], list[list[Any]]]:
    """``_assemble`` for series rows ``(period, key, width × SERIES_SLOTS day cells, days)``:
    each day of ``[lo, hi)`` added to its answer bucket, a slice of cells at a time. A key is
    in the answer if it made a request in the range (a bit of ``days``)."""
    n = len(epochs) - 1
    days = (hi - lo) // 86400
    at = [max(0, min(bisect.bisect_right(epochs, lo + d * 86400) - 1, n - 1)) for d in range(days)]
    by_day = n == days  # one bucket per day: the cells line up with the answer's
    by_key: dict[str, list[list[Any]]] = {}
    # (key, period) pairs read: a period's days are its own cells, zeros until its first row.
    seen: set[tuple[str, int]] = set()
    for row in rows:
        first = (row[0] - lo) // 86400  # the range's day of the period's slot 0
        a, b = max(0, -first), min(SERIES_SLOTS, days - first)
        if a >= b or not (row[-1] >> a) & ((1 << (b - a)) - 1):
            continue
        arrays = by_key.get(row[1])
        if arrays is None:
            arrays = by_key[row[1]] = [[0] * n for _ in range(width)]
        again = (row[1], row[0]) in seen
        seen.add((row[1], row[0]))
        for j, cells in enumerate(arrays):
            start = 2 + j * SERIES_SLOTS
            got = row[start + a : start + b]
            if by_day and not again:
                cells[first + a : first + b] = got
            elif by_day:
                cells[first + a : first + b] = map(operator.add, cells[first + a : first + b], got)
            else:
                for index, value in zip(at[first + a : first + b], got, strict=True):
                    cells[index] += value
    return {(key if type(key) is str else str(key),): arrays for key, arrays in by_key.items()}


#: Groups whose value is the column's text as it is.
_TEXT_GROUPS = frozenset({"api_key_id", "model", "cluster", "endpoint"})


def _assemble_sums(
    rows: Sequence[Sequence[Any]], exact: dict[int, int], epochs: list[int]
) -> dict[tuple[str, ...], list[list[Any]]]:
    """``_assemble`` for the most asked shape, one sum per bucket grouped by one text column
    (per key by day: 1,000 × 31 rows), row by row: rows ``(bucket, text, sum)``."""
    n = len(epochs) - 1
    by_text: dict[str, list[Any]] = {}
    for bucket, name, value in rows:
        index = exact.get(bucket)
        if index is None:
            index = max(0, min(bisect.bisect_right(epochs, bucket) - 1, n - 1))
        cells = by_text.get(name)
        if cells is None:
            cells = by_text[name] = [0] * n
        cells[index] += value
    if type(rows[0][2]) is not int:  # PostgreSQL sums BIGINTs as NUMERIC
        by_text = {k: [int(v) for v in cells] for k, cells in by_text.items()}
    return {(name if type(name) is str else str(name),): [cells] for name, cells in by_text.items()}


def _group_values(group: str, columns: list[str], cols: list[tuple[Any, ...]]) -> list[str]:
    """One group-by value per result row, from the rows' columns (``bucket``, ``columns``, the
    unit type, measures)."""
    at = {c: 1 + i for i, c in enumerate(columns)}
    if group == "unit_type":
        return list(cols[1 + len(columns)])
    if group == "status":
        return [status_class(int(v)) for v in cols[at["status"]]]
    if group == "description":
        return [
            f"{ENDPOINT_LABELS.get(e, e)} {m}"
            for e, m in zip(cols[at["endpoint"]], cols[at["model"]], strict=True)
        ]
    return [v if type(v) is str else str(v) for v in cols[at[group]]]


def _values(v: Value, measures: list[_Measure], arrays: list[list[Any]]) -> list[float | int]:
    """The value ``v`` in each bucket, from the measures' arrays."""
    scale = COST_PER_USD if v.name == "usd" else 1
    requests = (
        arrays[measures.index(("sum", "requests"))] if ("sum", "requests") in measures else []
    )
    if v.aggregation == "AGGREGATION_COUNT":
        return list(requests)
    if v.aggregation in EXTREME_AGGREGATIONS:
        if v.name == "requests":
            return [1 if r else 0 for r in requests]
        column = arrays[
            measures.index(("min" if v.aggregation == "AGGREGATION_MIN" else "max", v.name))
        ]
        if scale == 1:
            return [x or 0 for x in column]
        return [(x or 0) / scale for x in column]
    sums = arrays[measures.index(("sum", v.name))]
    if v.aggregation == "AGGREGATION_AVG":
        return [x / scale / r if r else 0.0 for x, r in zip(sums, requests, strict=True)]
    if scale == 1:
        return list(sums)
    return [x / scale for x in sums]


def _label(group: str, value: str, names: Mapping[str, str]) -> str:
    if group == "api_key_id":
        return names.get(value, value)
    return value


def _key_names(conn: Connection, team_id: str, ids: set[str]) -> dict[str, str]:
    """The names of the keys in the answer (not of every key of the team: a team may hold a
    million), a bounded ``IN`` at a time."""
    k = t.api_keys
    wanted = sorted(ids)
    names: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        query = select(k.c.api_key_id, k.c.name).where(
            k.c.team_id == team_id, k.c.api_key_id.in_(chunk)
        )
        names.update((r.api_key_id, r.name) for r in conn.execute(query))
    return names


def render(answer: Answer) -> dict[str, Any]:
    stamps = [format_ts(s) for s in answer.timestamps]
    return {
        "timeSeries": [
            {
                "group": s.group,
                "groupLabels": s.labels,
                "dataPoints": [
                    {"timestamp": stamp, "values": values}
                    for stamp, values in zip(stamps, s.points, strict=True)
                ],
            }
            for s in answer.series
        ],
        "limitReached": answer.limit_reached,
    }


def render_json(answer: Answer) -> bytes:
    """``msgspec.json.encode(render(answer))``, byte for byte, built from the series' columns:
    each column is encoded once by msgspec and cut into its cells, and a series' points are one
    ``%`` of a template made once per answer (every bucket's ``{"timestamp":…,"values":[`` and a
    ``%s`` per value) by its cells, with no object per point."""
    encode = msgspec.json.encode
    prefixes = [
        b'{"timestamp":"' + format_ts(s).encode() + b'","values":[' for s in answer.timestamps
    ]
    templates: dict[int, bytes] = {}
    parts = [b'{"timeSeries":[']
    for i, s in enumerate(answer.series):
        width = len(s.columns)
        template = templates.get(width)
        if template is None:
            point = b",".join([b"%s"] * width)
            template = templates[width] = b"]},".join(
                p.replace(b"%", b"%%") + point for p in prefixes
            )
        cells = [encode(column)[1:-1].split(b",") if column else [] for column in s.columns]
        if not prefixes:
            points = b""
        elif width == 1:
            points = template % tuple(cells[0])
        else:
            points = template % tuple(itertools.chain.from_iterable(zip(*cells, strict=True)))
        parts += [
            b"," if i else b"",
            b'{"group":',
            encode(s.group),
            b',"groupLabels":',
            encode(s.labels),
            b',"dataPoints":[',
            points,
            b"]}]}" if prefixes else b"]}",
        ]
    parts += [b'],"limitReached":', b"true" if answer.limit_reached else b"false", b"}"]
    return b"".join(parts)


__all__ = ["Answer", "UsageQuery", "parse", "paused_gc", "render", "render_json", "run"]
