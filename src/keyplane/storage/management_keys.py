"""Management keys: the credentials of the Management API, stored by digest."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, insert, select, update

from keyplane.domain.model import ManagementKey
from keyplane.domain.timefmt import from_micros, to_micros
from keyplane.storage import driver
from keyplane.storage import tables as t
from keyplane.storage._convert import time_or_none

#: The live keys read lately, by their rows: every Management API request reads its caller's key,
#: and turning the row into a ``ManagementKey`` (its ACLs' JSON, three times) cost as much CPU as
#: the read. A row's values are plain, and the same row makes the same (frozen) key; a key whose
#: row changed (renamed, revoked) is another row. Emptied when full.
_live: dict[Any, ManagementKey] = {}
_LIVE_KEPT = 1024


def _live_key(row: Any) -> ManagementKey:
    key = _live.get(row)
    if key is None:
        if len(_live) >= _LIVE_KEPT:
            _live.clear()
        key = _live[row] = _management_key(row)
    return key


def _management_key(row: Row[Any]) -> ManagementKey:
    return ManagementKey(
        key_id=row.key_id,
        team_id=row.team_id,
        name=row.name,
        owner_user_id=row.owner_user_id,
        acls=tuple(json.loads(row.acls)),
        redacted=row.redacted,
        create_time=from_micros(row.create_time),
        modify_time=from_micros(row.modify_time),
        revoke_time=time_or_none(row.revoke_time),
    )


def _live_by(column: str) -> Any:
    """Unrevoked keys of unblocked teams, by ``column``."""
    return (
        select(t.management_keys)
        .join(t.teams, t.teams.c.team_id == t.management_keys.c.team_id)
        .where(
            t.management_keys.c[column] == bindparam(column),
            t.management_keys.c.revoke_time.is_(None),
            t.teams.c.blocked.is_(False),
        )
    )


_LIVE_BY_DIGEST = _live_by("digest")
_LIVE_BY_ID = _live_by("key_id")


class ManagementKeys:
    """The management keys, read and written in the transaction of ``conn``."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, key: ManagementKey, digest: str) -> None:
        self._conn.execute(
            insert(t.management_keys).values(
                key_id=key.key_id,
                team_id=key.team_id,
                name=key.name,
                owner_user_id=key.owner_user_id,
                digest=digest,
                redacted=key.redacted,
                acls=json.dumps(list(key.acls)),
                create_time=to_micros(key.create_time),
                modify_time=to_micros(key.modify_time),
                revoke_time=None,
            )
        )

    def live(self, digest: str) -> ManagementKey | None:
        """The management key with this digest, unless it is revoked or its team blocked."""
        row = driver.first(self._conn, _LIVE_BY_DIGEST, {"digest": digest})
        return None if row is None else _live_key(row)

    def live_by_id(self, key_id: str) -> ManagementKey | None:
        """``live`` by id: for a session that names its key without its secret."""
        row = driver.first(self._conn, _LIVE_BY_ID, {"key_id": key_id})
        return None if row is None else _live_key(row)

    def all(self, team_id: str | None) -> list[ManagementKey]:
        """Every team's keys (``team_id`` None) or one team's, revoked ones too, oldest first."""
        query = select(t.management_keys).order_by(
            t.management_keys.c.create_time, t.management_keys.c.key_id
        )
        if team_id is not None:
            query = query.where(t.management_keys.c.team_id == team_id)
        return [_management_key(r) for r in self._conn.execute(query)]

    def revoke(self, key_id: str, now: datetime) -> bool:
        """False: there is no such key, or it is revoked already."""
        result = self._conn.execute(
            update(t.management_keys)
            .where(t.management_keys.c.key_id == key_id, t.management_keys.c.revoke_time.is_(None))
            .values(revoke_time=to_micros(now), modify_time=to_micros(now))
        )
        return result.rowcount == 1
