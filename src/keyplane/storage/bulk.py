"""Bulk loading of API keys straight into the store, for benchmarks and the million-key tests.

Writes what ``services.keys.create_key`` writes per key (the key row, its secret's digest, one row
per ACL, and optionally a change-log row with the key's own revision and an audit event), but in
big transactions: ``executemany`` on SQLite, ``COPY`` on PostgreSQL. Not a request path: a
million keys load in about a minute instead of a million requests.

The secrets come from a seeded non-cryptographic generator (valid shape, bench data only).
Without ``change_log`` the store looks as if the log had been compacted after the load: every
gateway behind the current revision takes a snapshot.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, insert, select, update

from keyplane.domain import keysecrets
from keyplane.domain.timefmt import format_ts, to_micros
from keyplane.storage import tables as t
from keyplane.storage.db import Database

#: Every loaded key's ACLs; one key in ``rare_every`` gets ``RARE_ACL`` as well.
BULK_ACLS = ("api-key:endpoint:chat", "api-key:model:grok-4")
RARE_ACL = "api-key:model:grok-rare"


@dataclass
class Loaded:
    team_id: str
    count: int
    seconds: float
    first_revision: int
    last_revision: int
    #: A few (api_key_id, secret) pairs of the loaded keys, for spot checks.
    samples: list[tuple[str, str]] = field(default_factory=list)


def load_api_keys(
    db: Database,
    *,
    team_id: str,
    count: int,
    prefix: str = "xai-",
    batch: int = 20_000,
    change_log: bool = True,
    audit: bool = True,
    rare_every: int = 0,
    seed: int = 0xB0B,
    progress: Callable[[str], None] | None = None,
    time_limit: float | None = None,
) -> Loaded:
    """Insert ``count`` keys for ``team_id`` (whose first management key's owner becomes their
    user). Bounded: stops with ``TimeoutError`` once ``time_limit`` seconds have passed."""
    rng = random.Random(seed)  # noqa: S311 - bench data, not secrets anyone relies on
    started = time.perf_counter()
    with db.read() as conn:
        user_id = conn.execute(
            select(t.management_keys.c.owner_user_id)
            .where(t.management_keys.c.team_id == team_id)
            .limit(1)
        ).scalar_one()
    base = datetime.now(UTC)
    loaded = Loaded(team_id, 0, 0.0, 0, 0)
    while loaded.count < count:
        if time_limit is not None and time.perf_counter() - started > time_limit:
            raise TimeoutError(f"bulk load: {loaded.count}/{count} keys after {time_limit:.0f} s")
        n = min(batch, count - loaded.count)
        with db.write() as conn:
            if db.is_sqlite:
                conn.exec_driver_sql("PRAGMA cache_size=-262144")  # 256 MiB for the big indexes
            start_rev = int(conn.execute(select(t.revision_counter.c.value)).scalar_one()) + 1
            conn.execute(update(t.revision_counter).values(value=start_rev + n - 1))
            rows = _Rows()
            for i in range(n):
                seq = loaded.count + i
                secret = _secret(rng, prefix)
                key_id = _uuid(rng)
                if len(loaded.samples) < 4:
                    loaded.samples.append((key_id, secret))
                rare = rare_every > 0 and seq % rare_every == rare_every - 1
                rows.add(
                    key_id=key_id,
                    secret=secret,
                    prefix=prefix,
                    team_id=team_id,
                    user_id=user_id,
                    seq=seq,
                    when=base + timedelta(microseconds=seq),
                    revision=start_rev + i,
                    acls=(*BULK_ACLS, RARE_ACL) if rare else BULK_ACLS,
                    change_log=change_log,
                    audit=audit,
                    rng=rng,
                )
            for table, batch_rows in rows.by_table():
                insert_rows(conn, table, batch_rows)
        loaded.first_revision = loaded.first_revision or start_rev
        loaded.last_revision = start_rev + n - 1
        loaded.count += n
        if progress is not None:
            rate = loaded.count / max(time.perf_counter() - started, 1e-9)
            progress(f"bulk load: {loaded.count:,}/{count:,} keys ({rate:,.0f}/s)")
    loaded.seconds = time.perf_counter() - started
    return loaded


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _secret(rng: random.Random, prefix: str) -> str:
    return prefix + f"{rng.getrandbits(4 * keysecrets.SECRET_LENGTH):080x}"


class _Rows:
    """One batch's rows per table, as storage values in column order."""

    def __init__(self) -> None:
        self.keys: list[tuple[Any, ...]] = []
        self.secrets: list[tuple[Any, ...]] = []
        self.acls: list[tuple[Any, ...]] = []
        self.changes: list[tuple[Any, ...]] = []
        self.audit: list[tuple[Any, ...]] = []

    def add(
        self,
        *,
        key_id: str,
        secret: str,
        prefix: str,
        team_id: str,
        user_id: str,
        seq: int,
        when: datetime,
        revision: int,
        acls: Sequence[str],
        change_log: bool,
        audit: bool,
        rng: random.Random,
    ) -> None:
        us = to_micros(when)
        name = f"bulk key {seq}"
        redacted = keysecrets.redact(secret, prefix)
        digest = keysecrets.digest(secret)
        acl_text = json.dumps(list(acls))
        # Column order of tables.api_keys.
        head = (key_id, team_id, user_id, name, redacted, us, us, user_id, False, None)
        self.keys.append((*head, 10, 600, None, acl_text, revision, None, None, None, None))
        self.secrets.append((digest, key_id, us, None))
        self.acls += [(key_id, acl, team_id, us) for acl in acls]
        if change_log:
            stamp = format_ts(when)
            view = {
                "apiKeyId": key_id,
                "teamId": team_id,
                "userId": user_id,
                "name": name,
                "redactedApiKey": redacted,
                "createTime": stamp,
                "modifyTime": stamp,
                "modifiedBy": user_id,
                "disabled": False,
                "expireTime": None,
                "qps": 10,
                "qpm": 600,
                "tpm": None,
                "acls": list(acls),
                "secrets": [{"digest": digest, "expireTime": None}],
                "revision": revision,
                "apiKeyBlockedUntil": None,
                "teamBlockedUntil": None,
            }
            self.changes.append(
                (revision, key_id, team_id, "upsert", json.dumps(view, separators=(",", ":")), us)
            )
        if audit:
            said = f"Created API key {name!r} ({redacted})"
            self.audit.append(
                (_uuid(rng), team_id, us, user_id, "CreateApiKey", "API_KEY", key_id, said)
            )

    def by_table(self) -> list[tuple[Table, list[tuple[Any, ...]]]]:
        found = [
            (t.api_keys, self.keys),
            (t.api_key_secrets, self.secrets),
            (t.api_key_acls, self.acls),
            (t.change_log, self.changes),
            (t.audit_events, self.audit),
        ]
        return [(table, rows) for table, rows in found if rows]


def insert_rows(conn: Connection, table: Table, rows: list[tuple[Any, ...]]) -> None:
    """Rows (storage values, every column in the table's order) in one statement: ``COPY`` on
    PostgreSQL, one ``executemany`` of the table's INSERT elsewhere."""
    columns = [c.name for c in table.columns]
    if any(len(r) != len(columns) for r in rows):
        raise ValueError(f"{table.name}: every row needs {len(columns)} values")
    if conn.dialect.name == "postgresql":
        names = ", ".join(f'"{c}"' for c in columns)
        dbapi: Any = conn.connection.dbapi_connection
        with (
            dbapi.cursor() as cursor,
            cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy,
        ):
            for row in rows:
                copy.write_row(row)
        return
    sql = str(insert(table).compile(dialect=conn.dialect))
    conn.exec_driver_sql(sql, rows)
