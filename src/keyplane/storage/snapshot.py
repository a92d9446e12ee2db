"""Every key's enforcement view, streamed for the feed's snapshot: one ordered join, no per-key
objects, constant memory (the rows are fetched in batches; PostgreSQL through a server-side
cursor). Yields the values of ``keyplane.domain.model.enforcement_view`` in
``keyplane.domain.model.ROW_FIELDS`` order, with the ACLs as their stored JSON text.

Its own module, beside ``repository``: the one read whose cost grows with the whole store.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, select

from keyplane.domain.timefmt import format_micros
from keyplane.storage import tables as t

_FETCH = 2000


def _ts(value: int | None) -> str | None:
    return None if value is None else format_micros(value)


def key_rows(conn: Connection, *, after: str | None = None) -> Iterator[list[Any]]:
    """Each key (id greater than ``after``, if given) in id order, as a row of view values
    whose ``acls`` is JSON text and whose secrets are ``[digest, expireTime]``, newest first."""
    k, s = t.api_keys, t.api_key_secrets
    query = (
        select(
            k.c.api_key_id,
            s.c.digest,
            s.c.expire_time.label("secret_expire"),
            k.c.team_id,
            k.c.user_id,
            k.c.name,
            k.c.redacted,
            k.c.create_time,
            k.c.modify_time,
            k.c.modified_by,
            k.c.disabled,
            k.c.expire_time,
            k.c.qps,
            k.c.qpm,
            k.c.tpm,
            k.c.acls,
            k.c.revision,
            k.c.budget_blocked_until,
            k.c.team_blocked_until,
        )
        .select_from(k.outerjoin(s, s.c.api_key_id == k.c.api_key_id))
        .order_by(k.c.api_key_id, s.c.create_time.desc())
    )
    if after is not None:
        query = query.where(k.c.api_key_id > after)
    result = conn.execution_options(yield_per=_FETCH).execute(query)
    row: list[Any] | None = None
    for r in result:
        if row is not None and row[0] == r[0]:
            if r[1] is not None:
                row[1].append([r[1], _ts(r[2])])
            continue
        if row is not None:
            yield row
        row = [
            r[0],
            [] if r[1] is None else [[r[1], _ts(r[2])]],
            r[3],
            r[4],
            r[5],
            r[6],
            _ts(r[7]),
            _ts(r[8]),
            r[9],
            bool(r[10]),
            _ts(r[11]),
            r[12],
            r[13],
            r[14],
            r[15],
            int(r[16]),
            _ts(r[17]),
            _ts(r[18]),
        ]
    if row is not None:
        yield row
