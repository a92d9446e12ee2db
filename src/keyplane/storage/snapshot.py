"""Every key's enforcement view, streamed for the feed's snapshot: one ordered join, no per-key
objects, constant memory (the rows are fetched in batches; PostgreSQL through a server-side
cursor). Yields the values of ``keyplane.domain.model.enforcement_view`` in
``keyplane.domain.model.ROW_FIELDS`` order, with the ACLs as their stored JSON text.

Its own module, beside ``repository``: the one read whose cost grows with the whole store.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select, text

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


def key_count(conn: Connection) -> int:
    """How many keys a snapshot holds: a count over the keys' primary index."""
    return int(conn.execute(select(func.count()).select_from(t.api_keys)).scalar_one())


def _ts(value: int | None) -> str | None:
    return None if value is None else format_micros(value)


def _newest_first(row: list[Any], created: list[int]) -> list[Any]:
    if len(created) > 1:
        order = sorted(range(len(created)), key=lambda i: -created[i])
        row[1] = [row[1][i] for i in order]
    return row


def _time_sql(column: str, *, sqlite: bool) -> str:
    """SQL formatting a stored time (microseconds since the epoch, or NULL) as ``format_micros``
    does: ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, or NULL."""
    if sqlite:
        # Floor division by hand: SQLite's ``/`` and ``%`` truncate toward zero (times before
        # 1970 would be off by a second otherwise).
        frac = f"((({column}) % 1000000 + 1000000) % 1000000)"
        return (
            f"strftime('%Y-%m-%dT%H:%M:%S', (({column}) - {frac}) / 1000000, 'unixepoch')"
            f" || printf('.%06dZ', {frac})"
        )
    return (
        # Seconds and microseconds apart: an interval times a bigint goes through a double.
        f"to_char(timestamp '1970-01-01' + ({column}) / 1000000 * interval '1 second'"
        f" + ({column}) % 1000000 * interval '1 microsecond',"
        ' \'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\')'
    )


def _json_row_sql(*, sqlite: bool) -> str:
    """One key per result row: its row (``ROW_FIELDS`` order) as JSON text, built by the store
    itself. Secrets newest first, each ``[digest, expireTime]``. Only constant SQL fragments are
    pasted together here (no value)."""
    t = functools.partial(_time_sql, sqlite=sqlite)
    expire = t("s.expire_time")
    if sqlite:
        array = "json_array"
        # The aggregate takes the ordered subquery's order (SQLite < 3.44 has no ORDER BY inside
        # an aggregate); json(): a subquery's answer loses its JSON subtype.
        secrets = (
            f"json((SELECT json_group_array(json_array(s.digest, {expire})) FROM"  # noqa: S608
            " (SELECT digest, expire_time FROM api_key_secrets"
            " WHERE api_key_id = k.api_key_id ORDER BY create_time DESC) AS s))"
        )
        disabled = "json(CASE WHEN k.disabled THEN 'true' ELSE 'false' END)"
        acls = "json(k.acls)"
        cast = ""
    else:
        array = "json_build_array"
        secrets = (
            "coalesce((SELECT json_agg(json_build_array(s.digest,"  # noqa: S608
            f" {expire}) ORDER BY s.create_time DESC) FROM api_key_secrets AS s"
            " WHERE s.api_key_id = k.api_key_id), '[]'::json)"
        )
        disabled = "k.disabled"
        acls = "k.acls::json"
        cast = "::text"  # psycopg would decode a json value
    fields = [
        "k.api_key_id",
        secrets,
        "k.team_id",
        "k.user_id",
        "k.name",
        "k.redacted",
        t("k.create_time"),
        t("k.modify_time"),
        "k.modified_by",
        disabled,
        t("k.expire_time"),
        "k.qps",
        "k.qpm",
        "k.tpm",
        acls,
        "k.revision",
        t("k.budget_blocked_until"),
        t("k.team_blocked_until"),
    ]
    return f"SELECT {array}({', '.join(fields)}){cast} FROM api_keys AS k"  # noqa: S608


def json_rows(
    conn: Connection, *, after: str | None = None, batch: int = _FETCH
) -> Iterator[list[str]]:
    """What ``key_rows`` yields, each row already JSON text (as ``format=rows`` sends it), in
    batches of up to ``batch`` rows: the store encodes, not Python — no per-key object here."""
    sql = _json_row_sql(sqlite=conn.dialect.name == "sqlite")
    params: dict[str, Any] = {}
    if after is not None:
        sql += " WHERE k.api_key_id > :after"
        params["after"] = after
    result = conn.execution_options(yield_per=batch).execute(
        text(sql + " ORDER BY k.api_key_id"), params
    )
    for part in result.scalars().partitions(batch):
        yield list(part)
