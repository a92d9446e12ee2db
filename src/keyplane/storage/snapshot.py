"""Every key's enforcement view, streamed for the feed's snapshot: one ordered join, no per-key
objects, constant memory (the rows are fetched in batches; PostgreSQL through a server-side
cursor). Yields the values of ``keyplane.domain.model.enforcement_view`` in
``keyplane.domain.model.ROW_FIELDS`` order, with the ACLs as their stored JSON text.

Its own module, beside ``repository``: the one read whose cost grows with the whole store.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select

from keyplane.domain.timefmt import format_micros
from keyplane.storage import tables as t

_FETCH = 2000
_EPOCH = datetime(1970, 1, 1)


def key_rows(conn: Connection, *, after: str | None = None) -> Iterator[list[Any]]:
    """Each key (id greater than ``after``, if given) in id order, as a row of view values
    whose ``acls`` is JSON text and whose secrets are ``[digest, expireTime]``, newest first."""
    k, s = t.api_keys, t.api_key_secrets
    query = (
        select(
            k.c.api_key_id,
            s.c.digest,
            s.c.expire_time.label("secret_expire"),
            s.c.create_time.label("secret_create"),
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
        # Only the key's order: a key's secrets (one, two while rotating) are sorted here, which
        # spares the store a sort per key.
        .order_by(k.c.api_key_id)
    )
    if after is not None:
        query = query.where(k.c.api_key_id > after)
    result = conn.execution_options(yield_per=_FETCH).execute(query)
    epoch, micros = _EPOCH, timedelta
    # format_micros, inlined: at a million keys its calls are a fifth of the snapshot's CPU.
    row: list[Any] | None = None
    created: list[int] = []
    for r in result:
        if row is not None and row[0] == r[0]:
            if r[1] is not None:
                row[1].append([r[1], _ts(r[2])])
                created.append(r[3])
            continue
        if row is not None:
            yield _newest_first(row, created)
        created = [] if r[1] is None else [r[3]]
        c, m = r[8], r[9]
        row = [
            r[0],
            [] if r[1] is None else [[r[1], None if r[2] is None else _ts(r[2])]],
            r[4],
            r[5],
            r[6],
            r[7],
            (epoch + micros(microseconds=c)).isoformat(timespec="microseconds") + "Z",
            (epoch + micros(microseconds=m)).isoformat(timespec="microseconds") + "Z",
            r[10],
            bool(r[11]),
            None if r[12] is None else _ts(r[12]),
            r[13],
            r[14],
            r[15],
            r[16],
            int(r[17]),
            None if r[18] is None else _ts(r[18]),
            None if r[19] is None else _ts(r[19]),
        ]
    if row is not None:
        yield _newest_first(row, created)


def _ts(value: int | None) -> str | None:
    return None if value is None else format_micros(value)


def _newest_first(row: list[Any], created: list[int]) -> list[Any]:
    if len(created) > 1:
        order = sorted(range(len(created)), key=lambda i: -created[i])
        row[1] = [row[1][i] for i in order]
    return row
