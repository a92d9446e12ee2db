"""API keys: the key rows, their ACL rows and secret digests, and the tombstones of deleted keys.

``ApiKeys`` is what the use cases read and write; the feed reads one key's latest revision
(``key_revision``), and every key at once through ``keyplane.storage.snapshot``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Insert,
    Row,
    Select,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)

from keyplane.domain.model import ApiKey, SecretDigest
from keyplane.domain.timefmt import from_micros, to_micros
from keyplane.storage import driver
from keyplane.storage import tables as t
from keyplane.storage._convert import micros_or_none, time_or_none

_INSERT_KEY = insert(t.api_keys)
_INSERT_ACLS = insert(t.api_key_acls)
_INSERT_SECRETS = insert(t.api_key_secrets)


def _api_key(row: Row[Any], secrets: Sequence[SecretDigest] = ()) -> ApiKey:
    return ApiKey(
        api_key_id=row.api_key_id,
        team_id=row.team_id,
        user_id=row.user_id,
        name=row.name,
        redacted=row.redacted,
        create_time=from_micros(row.create_time),
        modify_time=from_micros(row.modify_time),
        modified_by=row.modified_by,
        disabled=bool(row.disabled),
        expire_time=time_or_none(row.expire_time),
        qps=row.qps,
        qpm=row.qpm,
        tpm=row.tpm,
        acl_strings=tuple(json.loads(row.acls)),
        revision=int(row.revision),
        secrets=tuple(secrets),
        budget_cents=row.budget_cents,
        budget_period=row.budget_period,
        budget_blocked_until=time_or_none(row.budget_blocked_until),
        team_blocked_until=time_or_none(row.team_blocked_until),
    )


def api_key_values(key: ApiKey) -> dict[str, Any]:
    """The ``api_keys`` row of ``key``, but its id."""
    return {
        "team_id": key.team_id,
        "user_id": key.user_id,
        "name": key.name,
        "redacted": key.redacted,
        "create_time": to_micros(key.create_time),
        "modify_time": to_micros(key.modify_time),
        "modified_by": key.modified_by,
        "disabled": key.disabled,
        "expire_time": micros_or_none(key.expire_time),
        "qps": key.qps,
        "qpm": key.qpm,
        "tpm": key.tpm,
        "acls": json.dumps(list(key.acl_strings)),
        "revision": key.revision,
        "budget_cents": key.budget_cents,
        "budget_period": key.budget_period,
        "budget_blocked_until": micros_or_none(key.budget_blocked_until),
        "team_blocked_until": micros_or_none(key.team_blocked_until),
    }


#: Keys read in list order (from the team's index alone) before several ACL filters that match
#: few of them are looked up from the first one's own index instead.
ACL_PROBE = 4000
_ORDER = (t.api_keys.c.create_time, t.api_keys.c.api_key_id)


def _holding(query: Select[Any], key_id: Any, acl_filters: Sequence[str]) -> Select[Any]:
    """``query`` kept to the keys (``key_id``) that hold every ACL of ``acl_filters``."""
    for acl in acl_filters:
        query = query.where(
            exists().where(t.api_key_acls.c.api_key_id == key_id, t.api_key_acls.c.acl == acl)
        )
    return query


@dataclass(frozen=True, slots=True)
class ApiKeyQuery:
    """A page of a team's keys: in (createTime, apiKeyId) order, from just after ``after``, at
    most ``limit``, holding every ACL of ``acl_filters``, unexpired at ``active_at``, and with
    ``name_contains`` in their name (ignoring case), each where given."""

    team_id: str
    after: tuple[int, str] | None = None
    limit: int | None = None
    acl_filters: tuple[str, ...] = ()
    active_at: datetime | None = None
    name_contains: str | None = None


def _insert(conn: Connection, statement: Insert, rows: list[dict[str, Any]]) -> None:
    """``rows`` by a statement built once; one row as a plain execute, which costs SQLAlchemy
    less than an executemany of one (and the driver no more)."""
    driver.insert(conn, statement, rows[0] if len(rows) == 1 else rows)


class ApiKeys:
    """A team's API keys, read and written in the transaction of ``conn``."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self, api_key_id: str, *, team_id: str) -> ApiKey | None:
        """The key, if it exists *and* belongs to ``team_id``; other teams' keys do not exist."""
        row = self._conn.execute(
            select(t.api_keys).where(
                t.api_keys.c.api_key_id == api_key_id, t.api_keys.c.team_id == team_id
            )
        ).first()
        if row is None:
            return None
        secrets = self._conn.execute(
            select(t.api_key_secrets.c.digest, t.api_key_secrets.c.expire_time)
            .where(t.api_key_secrets.c.api_key_id == api_key_id)
            .order_by(t.api_key_secrets.c.create_time.desc())
        )
        return _api_key(row, [SecretDigest(s.digest, time_or_none(s.expire_time)) for s in secrets])

    def add(self, key: ApiKey, *, now: datetime) -> None:
        row = {"api_key_id": key.api_key_id, **api_key_values(key)}
        driver.insert(self._conn, _INSERT_KEY, row)
        self._write_acls(key)
        self._write_secrets(key, now=now)

    def replace(self, key: ApiKey, *, now: datetime) -> None:
        self._conn.execute(
            update(t.api_keys)
            .where(t.api_keys.c.api_key_id == key.api_key_id)
            .values(**api_key_values(key))
        )
        c = t.api_key_acls.c
        self._conn.execute(delete(t.api_key_acls).where(c.api_key_id == key.api_key_id))
        self._write_acls(key)
        s = t.api_key_secrets.c
        self._conn.execute(delete(t.api_key_secrets).where(s.api_key_id == key.api_key_id))
        self._write_secrets(key, now=now)

    def _write_acls(self, key: ApiKey) -> None:
        if key.acl_strings:
            created = to_micros(key.create_time)
            _insert(
                self._conn,
                _INSERT_ACLS,
                [
                    {
                        "api_key_id": key.api_key_id,
                        "acl": acl,
                        "team_id": key.team_id,
                        "create_time": created,
                    }
                    for acl in key.acl_strings
                ],
            )

    def _write_secrets(self, key: ApiKey, *, now: datetime) -> None:
        if key.secrets:
            _insert(
                self._conn,
                _INSERT_SECRETS,
                [
                    {
                        "digest": s.digest,
                        "api_key_id": key.api_key_id,
                        "create_time": to_micros(now) - i,  # newest first on read
                        "expire_time": micros_or_none(s.expire_time),
                    }
                    for i, s in enumerate(key.secrets)
                ],
            )

    def delete(self, key: ApiKey, *, now: datetime) -> None:
        """Delete the key, leaving a tombstone with ``key.revision``, the deletion's."""
        self._conn.execute(delete(t.api_keys).where(t.api_keys.c.api_key_id == key.api_key_id))
        self._conn.execute(
            insert(t.deleted_api_keys).values(
                api_key_id=key.api_key_id,
                team_id=key.team_id,
                revision=key.revision,
                delete_time=to_micros(now),
            )
        )

    def purge_tombstones(self, *, before: datetime) -> None:
        self._conn.execute(
            delete(t.deleted_api_keys).where(t.deleted_api_keys.c.delete_time < to_micros(before))
        )

    def page(self, q: ApiKeyQuery) -> list[ApiKey]:
        """The keys ``q`` asks for.

        With ACL filters, a page costs what the page holds, not the team's size nor how many
        keys hold the ACL: one filter is a range of ``ix_api_key_acls_list`` (the team's keys
        with that ACL, in list order). With several, the next ``ACL_PROBE`` keys in list order
        are read first and their ACLs probed, which finds a page of filters that many keys
        match; when fewer match there, the first filter's range drives (a window of twice the
        page comes first: filters most keys match are done after it)."""
        if not q.acl_filters or q.limit is None:
            query = self._filtered(select(t.api_keys), q, q.acl_filters)
            return self._rows(self._ordered(query, q))
        several = len(q.acl_filters) > 1
        for size in sorted({min(2 * q.limit, ACL_PROBE), ACL_PROBE}) if several else []:
            window = self._filtered(select(t.api_keys), q, ()).order_by(*_ORDER).limit(size)
            w = window.subquery()
            found = self._rows(
                _holding(select(w), w.c.api_key_id, q.acl_filters)
                .order_by(w.c.create_time, w.c.api_key_id)
                .limit(q.limit)
            )
            if len(found) == q.limit:
                return found
            if self._conn.execute(select(func.count()).select_from(w)).scalar_one() < size:
                return found  # the window held the rest of the team's keys: every match is here
        a, k = t.api_key_acls.alias("held"), t.api_keys
        first, *others = q.acl_filters
        query = (
            select(k)
            .select_from(a.join(k, k.c.api_key_id == a.c.api_key_id))
            .where(a.c.acl == first, a.c.team_id == q.team_id)
        )
        if q.after is not None:
            query = query.where(tuple_(a.c.create_time, a.c.api_key_id) > tuple_(*q.after))
        query = self._filtered(query, replace(q, after=None), others, team=False)
        return self._rows(query.order_by(a.c.create_time, a.c.api_key_id).limit(q.limit))

    def _filtered(
        self, query: Select[Any], q: ApiKeyQuery, acl_filters: Sequence[str], *, team: bool = True
    ) -> Select[Any]:
        k = t.api_keys
        if team:
            query = query.where(k.c.team_id == q.team_id)
        if q.name_contains:
            query = query.where(k.c.name.icontains(q.name_contains, autoescape=True))
        if q.after is not None:
            # A row-value comparison, so the (team, create_time, id) index serves it as a range:
            # with OR-ed conditions SQLite scans the team's keys from the start on every page.
            query = query.where(tuple_(k.c.create_time, k.c.api_key_id) > tuple_(*q.after))
        query = _holding(query, k.c.api_key_id, acl_filters)
        if q.active_at is not None:
            query = query.where(
                or_(k.c.expire_time.is_(None), k.c.expire_time > to_micros(q.active_at))
            )
        return query

    @staticmethod
    def _ordered(query: Select[Any], q: ApiKeyQuery) -> Select[Any]:
        query = query.order_by(*_ORDER)
        return query if q.limit is None else query.limit(q.limit)

    def _rows(self, query: Select[Any]) -> list[ApiKey]:
        return [_api_key(row) for row in self._conn.execute(query)]


def key_revision(conn: Connection, api_key_id: str, *, team_id: str, since: datetime) -> int | None:
    """The latest revision of a live key of ``team_id``, or of its deletion within the window."""
    value = conn.execute(
        select(t.api_keys.c.revision).where(
            t.api_keys.c.api_key_id == api_key_id, t.api_keys.c.team_id == team_id
        )
    ).scalar_one_or_none()
    if value is None:
        value = conn.execute(
            select(t.deleted_api_keys.c.revision).where(
                t.deleted_api_keys.c.api_key_id == api_key_id,
                t.deleted_api_keys.c.team_id == team_id,
                t.deleted_api_keys.c.delete_time >= to_micros(since),
            )
        ).scalar_one_or_none()
    return None if value is None else int(value)
