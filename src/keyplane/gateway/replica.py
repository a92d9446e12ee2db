"""The gateway's replica of the keys: an index on local disk, with the hot keys in memory.

The local SQLite file *is* the index: ``digests`` maps a secret's digest to its key's id and
``keys`` holds each key's view as a compact row (``propagation.wire.ROW_FIELDS``), both clustered
on their key (WITHOUT ROWID). A lookup that misses the bounded in-memory cache of hot keys costs
one point query (tens of microseconds); memory does not grow with the number of keys, and a
restarted gateway serves as soon as it opens the file (docs/architecture.md says why).

Changes are applied in revision order and idempotently (a revision at or below the applied one is
skipped), first to the file, then to memory (the cache entries of the changed keys are dropped);
so after a crash the gateway serves its last applied state at once and resumes the feed from
that revision, not from scratch. A snapshot is staged beside the live tables in committed chunks
(a cut-short one resumes where it stopped, even after a restart) and swapped in whole.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from keyplane.domain.acl import CompiledAcls
from keyplane.domain.timefmt import parse_ts
from keyplane.private_files import private_file
from keyplane.propagation.wire import (
    INDEX_DIGESTS,
    INSERT_ROWS,
    REPLICA_SCHEMA,
    REPLICA_TABLES,
    fsync_path,
    row_to_view,
    view_to_row,
)

_encode = msgspec.json.Encoder().encode
_decode_row = msgspec.json.Decoder(list[Any]).decode

#: Hot keys kept decoded in memory (a few hundred bytes each).
CACHE_KEYS = 16_384


class _Head(msgspec.Struct, array_like=True):
    """What indexing a row needs: the id and the secrets' digests (the rest is skipped)."""

    api_key_id: str
    secrets: list[tuple[str, str | None]]


_decode_head = msgspec.json.Decoder(_Head).decode


@functools.lru_cache(maxsize=4096)
def _compile(acls: tuple[str, ...]) -> CompiledAcls:
    # Most keys of a deployment share a handful of ACL lists; compile each once.
    return CompiledAcls.compile(acls)


def _epoch(value: str | None, field: str) -> float | None:
    return None if value is None else parse_ts(value, field=field).timestamp()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One API key as the gateway enforces it. Built once per revision of the key."""

    api_key_id: str
    team_id: str
    user_id: str
    name: str
    redacted: str
    create_time: str
    modify_time: str
    modified_by: str
    disabled: bool
    expire_at: float | None  # epoch seconds
    qps: int | None
    qpm: int | None
    tpm: int | None
    acl_strings: tuple[str, ...]
    acls: CompiledAcls
    secrets: tuple[tuple[str, float | None], ...]  # (digest, epoch seconds it dies, if any)
    revision: int
    #: Until when spend blocks the key (its budget) or its team (the spending limit), epoch s.
    key_blocked_until: float | None
    team_blocked_until: float | None

    @classmethod
    def from_view(cls, view: Mapping[str, Any]) -> KeyRecord:
        acls = tuple(view.get("acls") or ())
        return cls(
            api_key_id=view["apiKeyId"],
            team_id=view["teamId"],
            user_id=view.get("userId") or "",
            name=view.get("name") or "",
            redacted=view.get("redactedApiKey") or "",
            create_time=view.get("createTime") or "",
            modify_time=view.get("modifyTime") or "",
            modified_by=view.get("modifiedBy") or "",
            disabled=bool(view.get("disabled")),
            expire_at=_epoch(view.get("expireTime"), "expireTime"),
            qps=view.get("qps"),
            qpm=view.get("qpm"),
            tpm=view.get("tpm"),
            acl_strings=acls,
            acls=_compile(acls),
            secrets=tuple(
                (s["digest"], _epoch(s.get("expireTime"), "secrets.expireTime"))
                for s in view.get("secrets") or ()
            ),
            revision=int(view.get("revision") or 0),
            key_blocked_until=_epoch(view.get("apiKeyBlockedUntil"), "apiKeyBlockedUntil"),
            team_blocked_until=_epoch(view.get("teamBlockedUntil"), "teamBlockedUntil"),
        )

    def is_expired(self, now: float) -> bool:
        return self.expire_at is not None and self.expire_at <= now

    def team_blocked(self, now: float) -> bool:
        return self.team_blocked_until is not None and now < self.team_blocked_until

    def key_blocked(self, now: float) -> bool:
        return self.key_blocked_until is not None and now < self.key_blocked_until


@dataclass(frozen=True, slots=True)
class Change:
    revision: int
    op: str  # "upsert" | "delete"
    view: Mapping[str, Any]


class ReplicaStore:
    """The replica's durable copy and index: a SQLite file in the gateway's own data directory
    (or in memory, ``path=None``). Writes come from one thread at a time (the feed follower's);
    ``find`` reads on its own connection, beside them (WAL)."""

    def __init__(self, path: Path | None) -> None:
        self._lock = threading.Lock()
        self.path = path
        if path is None:
            self._conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            self._reader = self._conn
        else:
            private_file(path)  # 0600 before SQLite opens it; the WAL takes its mode
            self._conn = self._open(path)
            self._conn.execute("PRAGMA journal_mode=WAL")
        with self._lock:
            self._setup()
        if path is not None:
            self._reader = self._open(path)
        self._reader_lock = self._lock if self._reader is self._conn else threading.Lock()
        self.revision = int(self._meta("revision") or 0)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # NORMAL: a lost tail after power loss rolls the revision back with it, and the gateway
        # simply fetches those changes again.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def _setup(self) -> None:
        c = self._conn
        if c.execute("PRAGMA user_version").fetchone()[0] != REPLICA_SCHEMA:
            # An older layout (or none): start over; the feed sends a snapshot.
            for table in ("keys", "digests", "meta", "snap_keys", "snap_digests"):
                c.execute(f"DROP TABLE IF EXISTS {table}")
            c.execute(f"PRAGMA user_version={REPLICA_SCHEMA}")
        for table in REPLICA_TABLES:
            c.execute(table)

    def _meta(self, name: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, name: str, value: object) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, str(value))
        )

    # -- reads ------------------------------------------------------------------------------------

    def find(self, digest: str) -> bytes | None:
        """The row of the key holding the secret whose digest this is."""
        with self._reader_lock:
            found = self._reader.execute(
                "SELECT k.row FROM digests d JOIN keys k ON k.id = d.id WHERE d.digest = ?",
                (digest,),
            ).fetchone()
        return None if found is None else bytes(found[0])

    def views(self) -> dict[str, dict[str, Any]]:
        with self._reader_lock:
            rows = self._reader.execute("SELECT id, row FROM keys").fetchall()
        return {key_id: row_to_view(_decode_row(row)) for key_id, row in rows}

    def count(self) -> int:
        with self._reader_lock:
            return int(self._reader.execute("SELECT count(*) FROM keys").fetchone()[0])

    def load_into(self, replica: Replica) -> None:
        """Make ``replica`` serve from this store (its revision and keys)."""
        replica.attach(self)

    # -- writes -----------------------------------------------------------------------------------

    def save_changes(self, changes: Iterable[Change], revision: int) -> None:
        """Apply the changes newer than the stored revision, in order, in one transaction."""
        fresh = sorted((c for c in changes if c.revision > self.revision), key=_by_revision)
        if not fresh:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for change in fresh:
                    self._drop(change.view["apiKeyId"])
                    if change.op != "delete":
                        self._put(_encode(view_to_row(change.view)))
                self._set_meta("revision", max(revision, fresh[-1].revision))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self.revision = max(revision, fresh[-1].revision)

    def _drop(self, key_id: str) -> None:
        old = self._conn.execute("SELECT row FROM keys WHERE id=?", (key_id,)).fetchone()
        if old is None:
            return
        head = _decode_head(old[0])
        self._conn.executemany(
            "DELETE FROM digests WHERE digest=? AND id=?", [(d, key_id) for d, _ in head.secrets]
        )
        self._conn.execute("DELETE FROM keys WHERE id=?", (key_id,))

    def _put(self, row: bytes) -> None:
        head = _decode_head(row)
        self._conn.execute("INSERT INTO keys (id, row) VALUES (?, ?)", (head.api_key_id, row))
        self._conn.executemany(
            "INSERT OR REPLACE INTO digests (digest, id) VALUES (?, ?)",
            [(d, head.api_key_id) for d, _ in head.secrets],
        )

    def save_snapshot(self, revision: int, views: Iterable[Mapping[str, Any]]) -> None:
        """Replace everything with a snapshot taken at ``revision``."""
        staged = self.stage(fresh=True)
        staged.part(revision)
        staged.add([_encode(view_to_row(v)) for v in views])
        staged.finish()

    def staged(self) -> bool:
        """A snapshot transfer was cut short: its rows so far wait to be completed."""
        with self._lock:
            return self._meta("snap_revision") is not None

    def stage(self, *, fresh: bool) -> StagedSnapshot:
        """A snapshot being written beside the live tables: a new one, or (``fresh=False``) the
        one a cut-short transfer left, if any."""
        return StagedSnapshot(self, fresh=fresh)

    def adopt(self, seed: Path) -> int:
        """Take ``seed`` (a complete replica file of this layout, written and fsynced beside this
        one) as this store's file, in place of what it holds; returns its revision. The old
        file's WAL goes with it, so none of its pages reach the new file."""
        if self.path is None:
            raise ValueError("an in-memory replica takes no seed file")
        with self._lock, self._reader_lock:
            if self._reader is not self._conn:
                self._reader.close()
            self._conn.close()
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
            os.replace(seed, self.path)
            fsync_path(self.path.parent)
            self._conn = self._open(self.path)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._setup()
            self._reader = self._open(self.path)
            self.revision = int(self._meta("revision") or 0)
        return self.revision

    def close(self) -> None:
        with self._lock:
            if self._reader is not self._conn:
                self._reader.close()
            self._conn.close()


def _by_revision(change: Change) -> int:
    return change.revision


class StagedSnapshot:
    """Rows of a snapshot, committed in chunks to ``snap_keys``; ``finish`` indexes their digests
    and swaps them in as the live tables. ``revision`` is the first part's; ``after`` the last id
    stored (a resumed transfer asks for the keys after it)."""

    def __init__(self, store: ReplicaStore, *, fresh: bool) -> None:
        self._store = store
        self._conn = store._conn
        with store._lock:
            started = store._meta("snap_revision")
            if fresh or started is None:
                self._conn.execute("DROP TABLE IF EXISTS snap_keys")
                self._conn.execute(
                    "CREATE TABLE snap_keys (id TEXT PRIMARY KEY, row BLOB NOT NULL) WITHOUT ROWID"
                )
                self._conn.execute("DELETE FROM meta WHERE name IN ('snap_revision', 'snap_after')")
                started = None
            self.revision: int | None = None if started is None else int(started)
            self.after: str | None = store._meta("snap_after")
        self.keys = 0

    def part(self, revision: int) -> None:
        """A (resumed) transfer read at ``revision`` begins."""
        if self.revision is None or revision < self.revision:
            self.revision = revision

    def add(self, rows: Sequence[bytes]) -> None:
        """Rows as sent (``wire.view_to_row``, JSON), in id order, committed together."""
        if not rows:
            return
        # One statement per chunk: SQLite splits the chunk (a JSON array of the rows) and takes
        # each id itself, no per-row Python. The digests are indexed once, in ``finish``.
        chunk = b"[" + b",".join(rows) + b"]"
        last = _decode_head(rows[-1]).api_key_id
        with self._store._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(INSERT_ROWS.format(table="snap_keys"), (chunk.decode(),))
                self._store._set_meta("snap_revision", self.revision or 0)
                self._store._set_meta("snap_after", last)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        self.after = last
        self.keys += len(rows)

    def finish(self) -> int:
        """Swap the staged snapshot in; returns its revision."""
        revision = self.revision or 0
        c = self._conn
        with self._store._lock:
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute("DROP TABLE keys")
                c.execute("ALTER TABLE snap_keys RENAME TO keys")
                c.execute("DROP TABLE digests")
                c.execute(REPLICA_TABLES[2])
                c.execute(INDEX_DIGESTS)
                c.execute("DROP TABLE IF EXISTS snap_digests")  # an older version's staging
                c.execute("DELETE FROM meta WHERE name IN ('snap_revision', 'snap_after')")
                self._store._set_meta("revision", revision)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            self._store.revision = revision
            if self._store._reader is not c:
                c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return revision


class Replica:
    """Keys by secret digest, served from a :class:`ReplicaStore` through a bounded cache of hot
    keys, plus the revision they reflect. Without a store of its own it keeps one in memory."""

    def __init__(self, store: ReplicaStore | None = None, *, cache_keys: int = CACHE_KEYS) -> None:
        self._store = store
        # Digest -> (its key, when that secret dies): a hit needs no search of the key's secrets.
        # Keyed by the digest's 32 bytes, as the gateway computes it (``.digest()``): the stored
        # hex digests are converted once, when a key is loaded, not on every request.
        self._cache: OrderedDict[bytes, tuple[KeyRecord, float | None]] = OrderedDict()
        self._by_id: dict[str, KeyRecord] = {}
        self._cache_keys = cache_keys
        self.revision = 0 if store is None else store.revision

    @property
    def store(self) -> ReplicaStore:
        if self._store is None:
            self._store = ReplicaStore(None)
        return self._store

    def attach(self, store: ReplicaStore) -> None:
        self._store = store
        self.revision = store.revision
        self._forget_all()

    def lookup(self, digest: bytes, now: float) -> KeyRecord | None:
        """The key holding the secret whose SHA-256 digest (raw bytes) this is, if that secret
        is alive at ``now``."""
        if digest not in self._cache and self._load(digest) is None:
            return None
        return self.cached(digest, lambda: now)

    def cached(self, digest: bytes, clock: Callable[[], float]) -> KeyRecord | None:
        """``lookup`` among the hot keys only, at ``clock()``: None for a digest not cached, with
        no read of the store. Only digests of stored secrets are ever cached, and every stored
        secret is well formed (``keysecrets.generate_secret``), so a hit vouches for the secret's
        shape. The clock is read only for a secret that can die (most never do)."""
        hit = self._cache.get(digest)
        if hit is None:
            return None
        self._cache.move_to_end(digest)
        record, dies_at = hit
        return record if dies_at is None or dies_at > clock() else None

    def _load(self, digest: bytes) -> KeyRecord | None:
        row = self.store.find(digest.hex())
        if row is None:
            return None
        record = KeyRecord.from_view(row_to_view(_decode_row(row)))
        if len(self._cache) >= self._cache_keys:
            _, (evicted, _) = self._cache.popitem(last=False)
            self._forget(evicted.api_key_id)
        self._forget(record.api_key_id)
        self._by_id[record.api_key_id] = record
        for secret, dies_at in record.secrets:
            self._cache[bytes.fromhex(secret)] = (record, dies_at)
        return record

    def _forget(self, api_key_id: str) -> None:
        old = self._by_id.pop(api_key_id, None)
        if old is not None:
            for secret, _ in old.secrets:
                raw = bytes.fromhex(secret)
                hit = self._cache.get(raw)
                if hit is not None and hit[0] is old:
                    del self._cache[raw]

    def _forget_all(self) -> None:
        self._cache.clear()
        self._by_id.clear()

    def apply(self, changes: Iterable[Change]) -> int:
        """Apply changes newer than the current revision, in order; return how many applied.
        The store saves those it lacks (a follower saves first, off the event loop)."""
        fresh = sorted((c for c in changes if c.revision > self.revision), key=_by_revision)
        if not fresh:
            return 0
        self.store.save_changes(fresh, fresh[-1].revision)
        for change in fresh:
            self._forget(change.view["apiKeyId"])
        self.revision = fresh[-1].revision
        return len(fresh)

    def load(self, revision: int, views: Iterable[Mapping[str, Any]]) -> None:
        """Replace everything with a snapshot taken at ``revision`` (unless the store holds it
        already: one revision is one state)."""
        if self.store.revision != revision:
            self.store.save_snapshot(revision, views)
        self.loaded(revision)

    def loaded(self, revision: int) -> None:
        """The store now holds a snapshot at ``revision``: serve it."""
        self.revision = revision
        self._forget_all()

    def views(self) -> dict[str, Mapping[str, Any]]:
        return dict(self.store.views())
