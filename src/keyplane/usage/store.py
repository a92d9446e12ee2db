"""Reads and writes of the usage tables, in dialect-neutral Core (upserts per dialect)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    TextClause,
    bindparam,
    case,
    delete,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from keyplane.domain.timefmt import to_micros
from keyplane.storage import driver
from keyplane.storage import tables as t
from keyplane.usage.schema import (
    ALL_KEYS,
    EXTREMES,
    FOLD,
    ROLLUP_KEY,
    ROLLUP_SUMS,
    ROLLUPS,
    SERIES_PERIOD,
    SERIES_SLOTS,
    SERIES_SUMS,
    team_billing,
    usage_fold,
    usage_ingest_marks,
    usage_minutes,
    usage_series,
    usage_spend,
)


def stage(conn: Connection, records: Iterable[Any]) -> int:
    """Put a batch's records (``UsageRecord``s, at least one), grouped by minute
    (``by_minute``), in the connection's staging table, empty before: one driver call (an
    ``executemany`` on SQLite, a ``COPY`` on PostgreSQL). The first minute staged (epoch s)."""
    rows = by_minute(records)
    conn.exec_driver_sql(_staging_sql(conn.dialect.name))
    if conn.dialect.name == "postgresql":
        # COPY's text format: a quarter of the CPU of binding arrays for unnest (measured
        # 5 against 19 µs per record, client and server). Its commit empties the table.
        cursor: Any = conn.connection.cursor()
        with cursor.copy(_STAGE_PG) as copy:
            copy.write(_copy_text(rows))
    else:
        conn.exec_driver_sql("DELETE FROM usage_batch_minutes")
        conn.exec_driver_sql(_STAGE_SQLITE, rows)
    oldest: int = min(row[1] for row in rows)
    return oldest


#: ``usage_batch_minutes``' columns after the minute row's key: the sums, then the extremes.
_EXTREME_COLUMNS = [(f"{m}_{v}", m, v) for v in EXTREMES for m in ("min", "max")]
MINUTE_VALUES = (*ROLLUP_SUMS, *(name for name, _, _ in _EXTREME_COLUMNS))


def by_minute(records: Iterable[Any]) -> list[tuple[Any, ...]]:
    """``records`` (``UsageRecord``s) grouped per team, minute (epoch s), key, model, endpoint
    and status: a row of ``usage_batch_minutes`` each (its key, then ``MINUTE_VALUES``).
    In Python, in one pass: the records need not be put in the database one by one to be
    grouped there (that cost ~3 µs a record on SQLite, inserting, grouping and emptying)."""
    rows: dict[tuple[Any, ...], list[int]] = {}
    for r in records:
        p, c, cost = r.prompt_tokens, r.completion_tokens, r.cost
        t = p + c
        key = (r.team_id, r.time_ms // 60000 * 60, r.api_key_id, r.model, r.endpoint, r.status)
        row = rows.get(key)
        if row is None:
            extra = r.completion_cost, r.image_cost
            rows[key] = [1, p, c, cost, *extra, p, p, c, c, t, t, cost, cost]
            continue
        row[0] += 1
        row[1] += p
        row[2] += c
        row[3] += cost
        row[4] += r.completion_cost
        row[5] += r.image_cost
        # EXTREMES' min and max each (2 stores cost less than 2 calls of min and max).
        row[6] = p if p < row[6] else row[6]
        row[7] = p if p > row[7] else row[7]
        row[8] = c if c < row[8] else row[8]
        row[9] = c if c > row[9] else row[9]
        row[10] = t if t < row[10] else row[10]
        row[11] = t if t > row[11] else row[11]
        row[12] = cost if cost < row[12] else row[12]
        row[13] = cost if cost > row[13] else row[13]
    return [(*key, *row) for key, row in rows.items()]


def _copy_text(records: Sequence[Sequence[Any]]) -> str:
    """``records`` (rows of one width) as COPY text: fields joined by tabs, rows by newlines.
    Strings escaped only when some text holds a backslash, a tab, a newline or a carriage return
    (never, from a gateway's ids and names: checked once over the whole text)."""
    text = "\n".join("\t".join(map(str, r)) for r in records)
    clean = (
        text.count("\t") == sum(len(r) - 1 for r in records)
        and text.count("\n") == len(records) - 1
        and "\\" not in text
        and "\r" not in text
    )
    if not clean:
        text = "\n".join("\t".join(map(_copy_field, r)) for r in records)
    return text + "\n"


def _copy_field(value: Any) -> str:
    if not isinstance(value, str):
        return str(value)
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


# Names are this module's own, never input; values are data.
_STAGE_PG = "COPY usage_batch_minutes FROM STDIN"
_SQLITE_MARKS = ", ".join("?" for _ in range(6 + len(MINUTE_VALUES)))
_STAGE_SQLITE = f"INSERT INTO usage_batch_minutes VALUES ({_SQLITE_MARKS})"  # noqa: S608


@functools.lru_cache(maxsize=4)
def _staging_sql(dialect: str) -> str:
    minutes = _minutes_table()
    if dialect == "postgresql":  # per session; emptied by every commit (and rollback)
        return f"{minutes} ON COMMIT DELETE ROWS"
    return minutes


def _minutes_table() -> str:
    """The batch grouped by minute: every rollup reads these rows, not the records."""
    kinds = ", ".join(f"{c} BIGINT" for c in MINUTE_VALUES)
    return (
        "CREATE TEMP TABLE IF NOT EXISTS usage_batch_minutes (team_id TEXT, bucket BIGINT, "
        f"api_key_id TEXT, model TEXT, endpoint TEXT, status BIGINT, {kinds})"
    )


def roll_up(conn: Connection, cluster: str, folded_to: int, oldest: int) -> None:
    """Add the staged minute rows to the rollups, per key and as the team's totals
    (``ALL_KEYS``), summed and upserted by the database, one statement each. Minutes only, but
    for rows older than the fold mark (``folded_to``: a gateway's backlog; ``oldest``: the
    staged rows' first minute), which also go into the hours and days, as ``fold`` would have
    put them there."""
    minutes, late = _rollup_sql(conn.dialect.name)
    for statement in minutes:
        conn.execute(statement, {"cluster": cluster})
    if oldest < folded_to:
        for statement in late:
            conn.execute(statement, {"cluster": cluster, "folded_to": folded_to})


def stage_spend(conn: Connection, *, every_team: bool) -> tuple[list[str], list[Any]]:
    """Add the staged records' cost to the teams' and keys' daily spend (after ``roll_up``).
    The teams that spent, sorted: all of them with ``every_team`` (a limit applies to every
    team), else those with a billing row (only they can have a limit or a block); and the rows
    (``api_key_id``, ``team_id``, ``budget_*``) of the keys that spent and have a budget."""
    conn.exec_driver_sql(_SPEND_SQL)
    teams = [r[0] for r in conn.exec_driver_sql(_SPENT_TEAMS if every_team else _BILLED_TEAMS)]
    return teams, list(conn.exec_driver_sql(_BUDGETED_SQL))


_SPENT = "FROM usage_batch_minutes WHERE cost > 0 AND team_id <> ''"
_SPENT_TEAMS = f"SELECT DISTINCT team_id {_SPENT} ORDER BY 1"
_BILLED_TEAMS = (
    f"SELECT team_id FROM team_billing WHERE team_id IN (SELECT team_id {_SPENT}) ORDER BY 1"  # noqa: S608
)
_BUDGETED_SQL = (
    "SELECT api_key_id, team_id, budget_cents, budget_period, budget_blocked_until "  # noqa: S608
    f"FROM api_keys WHERE api_key_id IN (SELECT api_key_id {_SPENT}) "
    "AND budget_cents IS NOT NULL ORDER BY api_key_id"
)
_SPEND_SQL = (
    "INSERT INTO usage_spend (subject, day, cost) "
    "SELECT subject, day, sum(cost) FROM ("
    " SELECT 'team:' || team_id AS subject, bucket / 86400 * 86400 AS day, cost"
    " FROM usage_batch_minutes WHERE cost > 0 AND team_id <> ''"
    " UNION ALL"
    " SELECT 'key:' || api_key_id, bucket / 86400 * 86400, cost"
    " FROM usage_batch_minutes WHERE cost > 0 AND team_id <> ''"
    ") AS spent GROUP BY subject, day ORDER BY subject, day "
    "ON CONFLICT (subject, day) DO UPDATE SET cost = usage_spend.cost + excluded.cost"
)

_ROLLUP_COLUMNS = ", ".join((*ROLLUP_KEY, *MINUTE_VALUES))
#: A row's sums and extremes folded over a group of rollup rows.
_FOLDED = ", ".join(
    (*(f"sum({c})" for c in ROLLUP_SUMS), *(f"{m}({n})" for n, m, _ in _EXTREME_COLUMNS))
)


def _upsert(dialect: str, table: str, rows: str) -> str:
    """Add ``rows`` (a SELECT of ``_ROLLUP_COLUMNS``) to ``table``: sums add up, extremes keep
    the smaller or larger (an unknown one, NULL from before migration 0008, stays unknown)."""
    updates = [f"{c} = {table}.{c} + excluded.{c}" for c in ROLLUP_SUMS]
    for name, m, _ in _EXTREME_COLUMNS:
        have = f"{table}.{name}"
        if dialect == "postgresql":  # LEAST/GREATEST skip NULL; unknown stays unknown
            both = f"{'LEAST' if m == 'min' else 'GREATEST'}({have}, excluded.{name})"
            updates.append(f"{name} = CASE WHEN {have} IS NULL THEN NULL ELSE {both} END")
        else:  # SQLite's two-argument min/max are NULL when either is
            updates.append(f"{name} = {m}({have}, excluded.{name})")
    # WHERE true in ``rows``: SQLite's parser needs it between a SELECT and ON CONFLICT.
    return (
        f"INSERT INTO {table} ({_ROLLUP_COLUMNS}) {rows}"
        f"ON CONFLICT ({', '.join(ROLLUP_KEY)}) DO UPDATE SET {', '.join(updates)}"
    )


@functools.lru_cache(maxsize=4)
def _rollup_sql(dialect: str) -> tuple[tuple[TextClause, ...], tuple[TextClause, ...]]:
    """``(minute upserts, hour and day upserts of the rows before the fold mark)``."""
    # Names are this module's own tables and columns, never input; the cluster is a parameter.
    minute_key = "team_id, bucket, api_key_id, model, endpoint, status"
    minutes: list[str] = []
    late: list[str] = []
    for width, table in ROLLUPS:
        for per_key in (True, False):
            key = "api_key_id" if per_key else f"'{ALL_KEYS}'"
            group = (
                "team_id, 2, api_key_id, model, endpoint, status"
                if per_key
                else "team_id, 2, model, endpoint, status"
            )
            where = "true" if width == 60 else "bucket < :folded_to"
            if width == 60 and per_key:  # the minute rows themselves, as grouped
                # Ordered, so concurrent ingests lock rows in one order (no deadlock on
                # PostgreSQL); SQLite has one writer, and the rows come in this order.
                order = f"ORDER BY {minute_key} " if dialect == "postgresql" else ""
                as_grouped = ", ".join(MINUTE_VALUES)
                rows = (
                    "SELECT team_id, bucket, api_key_id, model, :cluster, endpoint, status, "  # noqa: S608
                    f"{as_grouped} FROM usage_batch_minutes WHERE true {order}"
                )
            else:
                rows = (
                    f"SELECT team_id, bucket / {width} * {width}, {key}, model, :cluster, "  # noqa: S608
                    f"endpoint, status, {_FOLDED} FROM usage_batch_minutes WHERE {where} "
                    f"GROUP BY {group} ORDER BY {group} "
                )
            (minutes if width == 60 else late).append(_upsert(dialect, table.name, rows))
    late.append(series_upsert("usage_batch_minutes", "bucket < :folded_to"))
    # Built once: a TextClause made per execute parses its parameters out of the text again.
    return tuple(map(text, minutes)), tuple(map(text, late))


#: The cells of a ``usage_series`` row, in column order: every sum's slots, sum after sum.
SERIES_CELLS = tuple(f"{name}_{slot}" for name in SERIES_SUMS for slot in range(SERIES_SLOTS))


def series_upsert(source: str, where: str) -> str:
    """Add the per-key rows of ``source`` (a rollup table or the batch's minutes) that match
    ``where`` to ``usage_series``: grouped by key and day, then each day's sums put in its slot.
    Plain SQL both dialects read alike (integer ``/`` and ``%`` on BIGINT)."""
    p = SERIES_PERIOD
    sums = ", ".join(f"sum({name}) AS {name}" for name in SERIES_SUMS)
    picks = ", ".join(
        f"sum(CASE WHEN slot = {slot} THEN {name} ELSE 0 END)"
        for name in SERIES_SUMS
        for slot in range(SERIES_SLOTS)
    )
    cells = ", ".join(SERIES_CELLS)
    updates = ", ".join(f"{c} = usage_series.{c} + excluded.{c}" for c in SERIES_CELLS)
    # Names are this module's own, never input; the bounds are parameters.
    return (
        f"INSERT INTO usage_series (team_id, period, api_key_id, {cells}) "  # noqa: S608
        f"SELECT team_id, period, api_key_id, {picks} FROM ("
        f"SELECT team_id, bucket - bucket % {p} AS period, (bucket % {p}) / 86400 AS slot, "
        f"api_key_id, {sums} FROM {source} WHERE {where} AND api_key_id <> '{ALL_KEYS}' "
        "GROUP BY team_id, 2, 3, api_key_id) AS days "
        "GROUP BY team_id, period, api_key_id ORDER BY team_id, period, api_key_id "
        f"ON CONFLICT (team_id, period, api_key_id) DO UPDATE SET {updates}"
    )


# -- folding minutes into hours and days ----------------------------------------------------------


def folded_to(conn: Connection, *, exclusive: bool = False) -> int:
    """The fold mark (epoch s): hours and days hold exactly the minutes before it. Locked until
    commit on PostgreSQL: shared by ingests (which write hours and days below it), exclusive by a
    fold (which moves it)."""
    row = driver.first(conn, _FOLD_MARK[exclusive], {})
    return 0 if row is None else int(row.folded_to)


# Built once, read by the driver on SQLite (keyplane.storage.driver): every ingest reads both
# marks, and building a select per call cost more than the read.
_FOLD_MARK = {
    exclusive: select(usage_fold.c.folded_to)
    .where(usage_fold.c.name == FOLD)
    .with_for_update(read=not exclusive)
    for exclusive in (False, True)
}
_INGEST_MARK = (
    select(usage_ingest_marks.c.offset)
    .where(
        usage_ingest_marks.c.gateway_id == bindparam("gateway_id"),
        usage_ingest_marks.c.segment == bindparam("segment"),
    )
    .with_for_update()
)
# RETURNING: a statement with a result, so the driver runs it (``driver.first``). Parameters
# named unlike any column: SQLAlchemy would take those for SET values.
_MOVE_MARK = (
    update(usage_ingest_marks)
    .where(
        usage_ingest_marks.c.gateway_id == bindparam("of_gateway"),
        usage_ingest_marks.c.segment == bindparam("of_segment"),
    )
    .values(
        cluster=bindparam("to_cluster"),
        offset=bindparam("to_offset"),
        update_time=bindparam("to_time"),
    )
    .returning(usage_ingest_marks.c.offset)
)


def folded_to_expression() -> Any:
    """The fold mark inside a statement (one snapshot with the rows it reads)."""
    f = usage_fold
    return func.coalesce(
        select(f.c.folded_to).where(f.c.name == FOLD).scalar_subquery(), literal(0)
    )


def fold(conn: Connection, *, until: int, now: datetime, span: int = 3600) -> int:
    """Fold the minutes from the mark on, up to ``until`` and at most ``span`` seconds past the
    first minute row there (empty stretches are skipped), into hours and days, and move the
    mark; the new mark. Call it in a write transaction; repeat until it returns ``until``."""
    mark = folded_to(conn, exclusive=True)
    if until <= mark:
        return mark
    m = usage_minutes
    first = conn.execute(select(func.min(m.c.bucket)).where(m.c.bucket >= mark)).scalar()
    end = until if first is None else min(until, int(first) + span)
    if first is not None and int(first) < end:
        for statement in _fold_sql(conn.dialect.name):
            conn.execute(text(statement), {"lo": mark, "hi": end})
    values = {"folded_to": end, "update_time": to_micros(now)}
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(usage_fold)
        .values(name=FOLD, **values)
        .on_conflict_do_update(index_elements=["name"], set_=values)
    )
    return end


@functools.lru_cache(maxsize=4)
def _fold_sql(dialect: str) -> tuple[str, ...]:
    group = "team_id, 2, api_key_id, model, cluster, endpoint, status"
    series = series_upsert("usage_minutes", "bucket >= :lo AND bucket < :hi")
    return (
        *(
            _upsert(
                dialect,
                table.name,
                f"SELECT team_id, bucket / {width} * {width}, api_key_id, model, cluster, "  # noqa: S608
                f"endpoint, status, {_FOLDED} FROM usage_minutes "
                f"WHERE bucket >= :lo AND bucket < :hi GROUP BY {group} ORDER BY {group} ",
            )
            for width, table in ROLLUPS
            if width > 60
        ),
        series,
    )


def _purge_series(conn: Connection, cutoff: int) -> int:
    """Drop what ``usage_days`` drops from ``usage_series``: the days starting before ``cutoff``
    (whole periods, and the cells of the period it falls in)."""
    s = usage_series
    removed = conn.execute(delete(s).where(s.c.period + SERIES_PERIOD <= cutoff)).rowcount
    cleared = {
        s.c[f"{name}_{slot}"]: case(
            (s.c.period + slot * 86400 < cutoff, 0), else_=s.c[f"{name}_{slot}"]
        )
        for name in SERIES_SUMS
        for slot in range(SERIES_SLOTS)
    }
    conn.execute(
        update(s).where(s.c.period > cutoff - SERIES_PERIOD, s.c.period < cutoff).values(cleared)
    )
    return int(removed)


# -- ingest marks ---------------------------------------------------------------------------------


def lock_mark(conn: Connection, gateway_id: str, segment: int) -> int | None:
    """The ingested offset of a gateway's spool segment, row-locked until commit (PostgreSQL)."""
    row = driver.first(conn, _INGEST_MARK, {"gateway_id": gateway_id, "segment": segment})
    return None if row is None else int(row.offset)


def set_mark(
    conn: Connection,
    *,
    gateway_id: str,
    segment: int,
    cluster: str,
    offset: int,
    existed: bool,
    now: datetime,
) -> None:
    m = usage_ingest_marks
    values = {"cluster": cluster, "offset": offset, "update_time": to_micros(now)}
    if existed:
        moved = {"to_cluster": cluster, "to_offset": offset, "to_time": values["update_time"]}
        driver.first(conn, _MOVE_MARK, {**moved, "of_gateway": gateway_id, "of_segment": segment})
    else:
        # Two control planes may take the first batch of a segment at once: the second waits on
        # the first's row and then adds nothing (PostgreSQL); SQLite writers are serial anyway.
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(
            dialect.insert(m)
            .values(gateway_id=gateway_id, segment=segment, **values)
            .on_conflict_do_update(index_elements=["gateway_id", "segment"], set_=values)
        )


# -- spend ----------------------------------------------------------------------------------------


def spend_since(conn: Connection, subject: str, start_day: int) -> int:
    s = usage_spend
    value = conn.execute(
        select(func.coalesce(func.sum(s.c.cost), 0)).where(
            s.c.subject == subject, s.c.day >= start_day
        )
    ).scalar_one()
    return int(value)


def team_subject(team_id: str) -> str:
    return f"team:{team_id}"


def key_subject(api_key_id: str) -> str:
    return f"key:{api_key_id}"


# -- team limits ----------------------------------------------------------------------------------


# Built once: every CreateApiKey reads it (budgets.refine); building the select per call cost
# ~4x the query itself in SQLAlchemy's expression and cache-key work.
_TEAM_BILLING_ROW = select(team_billing).where(team_billing.c.team_id == bindparam("team_id"))


def team_billing_row(conn: Connection, team_id: str) -> Any:
    # By the driver on SQLite (keyplane.storage.driver): a plain row read, without SQLAlchemy's
    # execute (~3.7 % of a create's CPU before).
    return driver.first(conn, _TEAM_BILLING_ROW, {"team_id": team_id})


def team_billing_rows(conn: Connection, team_ids: Iterable[str]) -> dict[str, Any]:
    ids = list(team_ids)
    if not ids:
        return {}
    rows = conn.execute(select(team_billing).where(team_billing.c.team_id.in_(ids)))
    return {r.team_id: r for r in rows}


def save_team_billing(
    conn: Connection,
    team_id: str,
    *,
    soft_limit_cents: int | None,
    blocked_until: int | None,
    now: datetime,
) -> None:
    values = {
        "soft_limit_cents": soft_limit_cents,
        "blocked_until": blocked_until,
        "update_time": to_micros(now),
    }
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(team_billing)
        .values(team_id=team_id, **values)
        .on_conflict_do_update(index_elements=["team_id"], set_=values)
    )


def team_key_ids(conn: Connection, team_id: str) -> list[str]:
    k = t.api_keys
    return [
        r.api_key_id
        for r in conn.execute(
            select(k.c.api_key_id).where(k.c.team_id == team_id).order_by(k.c.api_key_id)
        )
    ]


def blocked_keys(conn: Connection, *, until_before: int) -> list[Any]:
    """Keys whose budget or team block ran out before ``until_before`` (epoch µs)."""
    k = t.api_keys
    return list(
        conn.execute(
            select(k.c.api_key_id, k.c.team_id).where(
                (k.c.budget_blocked_until < until_before) | (k.c.team_blocked_until < until_before)
            )
        )
    )


def expired_team_blocks(conn: Connection, *, until_before: int) -> list[str]:
    b = team_billing
    return [
        r.team_id for r in conn.execute(select(b.c.team_id).where(b.c.blocked_until < until_before))
    ]


# -- retention ------------------------------------------------------------------------------------


def purge(
    conn: Connection, *, cutoffs: Mapping[int, int], spend_before: int, marks_before: int
) -> int:
    """Drop rollup rows older than their resolution's cutoff (epoch s) and old ingest marks."""
    removed = 0
    for width, table in ROLLUPS:
        cutoff = cutoffs.get(width)
        if cutoff is not None and width == 60:  # a minute not folded yet is kept
            cutoff = min(cutoff, folded_to(conn))
        if cutoff is not None:
            removed += conn.execute(delete(table).where(table.c.bucket < cutoff)).rowcount
    day_cutoff = cutoffs.get(86400)
    if day_cutoff is not None:
        removed += _purge_series(conn, day_cutoff)
    conn.execute(delete(usage_spend).where(usage_spend.c.day < spend_before))
    conn.execute(delete(usage_ingest_marks).where(usage_ingest_marks.c.update_time < marks_before))
    return int(removed)
