"""The change log: one gap-free, deployment-wide revision per key change, and the rows the
gateways' feed reads.

``next_revision`` locks the counter row until the transaction ends, so revisions are gap-free and
commit in order on SQLite and PostgreSQL alike (docs/architecture.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import NoResultFound

from keyplane.domain.timefmt import to_micros
from keyplane.storage import driver
from keyplane.storage import tables as t

#: The PostgreSQL NOTIFY channel that announces committed revisions.
CHANGES_CHANNEL = "keyplane_changes"

# Statements built once: building a Core statement per call costs more than running it.
# One statement takes the next revision and reads it back (SQLite >= 3.35 and PostgreSQL both
# have RETURNING): an UPDATE and then a SELECT cost two round trips through SQLAlchemy.
_BUMP_REVISION = (
    update(t.revision_counter)
    .values(value=t.revision_counter.c.value + 1)
    .returning(t.revision_counter.c.value)
)
_READ_REVISION = select(t.revision_counter.c.value)
_INSERT_CHANGE = insert(t.change_log)


def next_revision(conn: Connection) -> int:
    """Take the next deployment-wide revision; the row stays locked until this transaction ends."""
    row = driver.first(conn, _BUMP_REVISION, {})
    if row is None:
        raise NoResultFound("the revision counter has no row")
    return int(row.value)


def current_revision(conn: Connection) -> int:
    return int(conn.execute(_READ_REVISION).scalar_one())


def append_change(
    conn: Connection,
    *,
    revision: int,
    api_key_id: str,
    team_id: str,
    op: str,
    view: dict[str, Any],
    now: datetime,
) -> None:
    driver.insert(
        conn,
        _INSERT_CHANGE,
        {
            "revision": revision,
            "api_key_id": api_key_id,
            "team_id": team_id,
            "op": op,
            "view": json.dumps(view, separators=(",", ":")),
            "commit_time": to_micros(now),
        },
    )
    if conn.dialect.name == "postgresql":
        # Delivered at commit, to every control plane LISTENing: their feed followers wake.
        conn.execute(select(func.pg_notify(CHANGES_CHANNEL, str(revision))))


@dataclass(frozen=True, slots=True)
class Change:
    revision: int
    op: str
    view: dict[str, Any]


def changes_after(conn: Connection, revision: int, limit: int) -> list[Change]:
    rows = conn.execute(
        select(t.change_log.c.revision, t.change_log.c.op, t.change_log.c.view)
        .where(t.change_log.c.revision > revision)
        .order_by(t.change_log.c.revision)
        .limit(limit)
    )
    return [Change(int(r.revision), r.op, json.loads(r.view)) for r in rows]


def oldest_retained_revision(conn: Connection) -> int | None:
    value = conn.execute(select(func.min(t.change_log.c.revision))).scalar_one_or_none()
    return None if value is None else int(value)


def compact_change_log(conn: Connection, *, through_revision: int) -> int:
    result = conn.execute(delete(t.change_log).where(t.change_log.c.revision <= through_revision))
    return int(result.rowcount)
