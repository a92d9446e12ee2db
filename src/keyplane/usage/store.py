"""Reads and writes of the usage tables, in dialect-neutral Core (upserts per dialect)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from keyplane.domain.timefmt import to_micros
from keyplane.storage import tables as t
from keyplane.usage.schema import (
    ROLLUPS,
    team_billing,
    usage_ingest_marks,
    usage_spend,
)

ROLLUP_KEY = ("team_id", "bucket", "api_key_id", "model", "cluster", "endpoint", "status")
ROLLUP_SUMS = ("requests", "prompt_tokens", "completion_tokens", "cost")


def upsert_add(
    conn: Connection,
    table: Table,
    rows: Sequence[Sequence[Any]],
    keys: Sequence[str],
    sums: Sequence[str],
) -> None:
    """Insert ``rows`` (tuples in the order ``keys + sums``); where a row with the same ``keys``
    exists, add ``sums`` to it. Plain driver SQL, built once per table and dialect: at ingest
    rates SQLAlchemy's per-row parameter processing cost more than the database."""
    if not rows:
        return
    conn.exec_driver_sql(_upsert_sql(conn.dialect.name, table.name, tuple(keys), tuple(sums)), rows)


@functools.lru_cache(maxsize=32)
def _upsert_sql(dialect: str, table: str, keys: tuple[str, ...], sums: tuple[str, ...]) -> str:
    # Names are this module's own table and column names, never input; values are parameters.
    mark = "%s" if dialect == "postgresql" else "?"
    columns = ", ".join(f'"{c}"' for c in (*keys, *sums))
    marks = ", ".join(mark for _ in (*keys, *sums))
    conflict = ", ".join(f'"{k}"' for k in keys)
    updates = ", ".join(f'"{c}" = {table}."{c}" + excluded."{c}"' for c in sums)
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({marks}) "  # noqa: S608
        f"ON CONFLICT ({conflict}) DO UPDATE SET {updates}"
    )


# -- ingest marks ---------------------------------------------------------------------------------


def lock_mark(conn: Connection, gateway_id: str, segment: int) -> int | None:
    """The ingested offset of a gateway's spool segment, row-locked until commit (PostgreSQL)."""
    m = usage_ingest_marks
    value = conn.execute(
        select(m.c.offset)
        .where(m.c.gateway_id == gateway_id, m.c.segment == segment)
        .with_for_update()
    ).scalar_one_or_none()
    return None if value is None else int(value)


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
        conn.execute(
            update(m).where(m.c.gateway_id == gateway_id, m.c.segment == segment).values(values)
        )
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


def team_billing_row(conn: Connection, team_id: str) -> Any:
    return conn.execute(select(team_billing).where(team_billing.c.team_id == team_id)).first()


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


def budgeted_keys(conn: Connection, key_ids: Iterable[str]) -> list[Any]:
    k = t.api_keys
    ids = list(key_ids)
    if not ids:
        return []
    return list(
        conn.execute(
            select(
                k.c.api_key_id,
                k.c.team_id,
                k.c.budget_cents,
                k.c.budget_period,
                k.c.budget_blocked_until,
            ).where(k.c.api_key_id.in_(ids), k.c.budget_cents.is_not(None))
        )
    )


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
        if cutoff is not None:
            removed += conn.execute(delete(table).where(table.c.bucket < cutoff)).rowcount
    conn.execute(delete(usage_spend).where(usage_spend.c.day < spend_before))
    conn.execute(delete(usage_ingest_marks).where(usage_ingest_marks.c.update_time < marks_before))
    return int(removed)
