"""The gateway's replica of the keys: what enforcement needs, in memory, persisted on local disk.

Changes are applied in revision order and idempotently (a revision at or below the applied one is
skipped), first to the local SQLite file, then to memory; so after a crash the gateway serves its
last applied state at once and resumes the feed from that revision, not from scratch.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from keyplane.domain.acl import CompiledAcls
from keyplane.domain.timefmt import parse_ts
from keyplane.private_files import private_file

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


@functools.lru_cache(maxsize=4096)
def _compile(acls: tuple[str, ...]) -> CompiledAcls:
    # Most keys of a deployment share a handful of ACL lists; compile each once.
    return CompiledAcls.compile(acls)


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
    #: The view as received, encoded: what the local store keeps and what ``Replica.views``
    #: shows. Bytes, not the dict, because at 100,000 keys the dicts alone cost ~260 MiB.
    raw: bytes

    @classmethod
    def from_view(cls, view: Mapping[str, Any]) -> KeyRecord:
        def epoch(value: str | None, field: str) -> float | None:
            return None if value is None else parse_ts(value, field=field).timestamp()

        acls = tuple(view.get("acls") or ())
        return cls(
            api_key_id=view["apiKeyId"],
            team_id=view["teamId"],
            user_id=view.get("userId", ""),
            name=view.get("name", ""),
            redacted=view.get("redactedApiKey", ""),
            create_time=view.get("createTime") or "",
            modify_time=view.get("modifyTime") or "",
            modified_by=view.get("modifiedBy", ""),
            disabled=bool(view.get("disabled")),
            expire_at=epoch(view.get("expireTime"), "expireTime"),
            qps=view.get("qps"),
            qpm=view.get("qpm"),
            tpm=view.get("tpm"),
            acl_strings=acls,
            acls=_compile(acls),
            secrets=tuple(
                (s["digest"], epoch(s.get("expireTime"), "secrets.expireTime"))
                for s in view.get("secrets") or ()
            ),
            revision=int(view.get("revision", 0)),
            key_blocked_until=epoch(view.get("apiKeyBlockedUntil"), "apiKeyBlockedUntil"),
            team_blocked_until=epoch(view.get("teamBlockedUntil"), "teamBlockedUntil"),
            raw=_encode(view),
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


class Replica:
    """Keys by secret digest and by id, plus the revision they reflect."""

    def __init__(self) -> None:
        self.revision = 0
        self.by_id: dict[str, KeyRecord] = {}
        self.by_digest: dict[str, KeyRecord] = {}

    def lookup(self, digest: str, now: float) -> KeyRecord | None:
        record = self.by_digest.get(digest)
        if record is None:
            return None
        for secret, dies_at in record.secrets:
            if secret == digest:
                return record if dies_at is None or dies_at > now else None
        return None

    def _put(self, record: KeyRecord) -> None:
        self._drop(record.api_key_id)
        self.by_id[record.api_key_id] = record
        for secret, _ in record.secrets:
            self.by_digest[secret] = record

    def _drop(self, api_key_id: str) -> None:
        old = self.by_id.pop(api_key_id, None)
        if old is not None:
            for secret, _ in old.secrets:
                if self.by_digest.get(secret) is old:
                    del self.by_digest[secret]

    def apply(self, changes: Iterable[Change]) -> int:
        """Apply changes newer than the current revision, in order; return how many applied."""
        applied = 0
        for change in sorted(changes, key=lambda c: c.revision):
            if change.revision <= self.revision:
                continue  # a duplicate delivery: already applied
            if change.op == "delete":
                self._drop(change.view["apiKeyId"])
            else:
                self._put(KeyRecord.from_view(change.view))
            self.revision = change.revision
            applied += 1
        return applied

    def load(self, revision: int, views: Iterable[Mapping[str, Any]]) -> None:
        """Replace everything with a snapshot taken at ``revision``."""
        self.by_id.clear()
        self.by_digest.clear()
        for view in views:
            self._put(KeyRecord.from_view(view))
        self.revision = revision

    def views(self) -> dict[str, Mapping[str, Any]]:
        return {key_id: _decode(record.raw) for key_id, record in self.by_id.items()}


class ReplicaStore:
    """The replica's durable copy: a SQLite file in the gateway's own data directory."""

    def __init__(self, path: Path) -> None:
        private_file(path)  # 0600 before SQLite opens it; the WAL takes its mode
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a lost tail after power loss rolls the revision back with it, and the gateway
        # simply fetches those changes again.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, view TEXT)")
        self._conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")

    def load_into(self, replica: Replica) -> None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
            views = [_decode(v) for (v,) in self._conn.execute("SELECT view FROM keys")]
        replica.load(int(row[0]) if row else 0, views)

    def save_changes(self, changes: list[Change], revision: int) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for change in changes:
                    key_id = change.view["apiKeyId"]
                    if change.op == "delete":
                        self._conn.execute("DELETE FROM keys WHERE id=?", (key_id,))
                    else:
                        self._conn.execute(
                            "INSERT OR REPLACE INTO keys (id, view) VALUES (?, ?)",
                            (key_id, _encode(change.view)),
                        )
                self._set_revision(revision)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def save_snapshot(self, revision: int, views: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("DELETE FROM keys")
                self._conn.executemany(
                    "INSERT INTO keys (id, view) VALUES (?, ?)",
                    ((v["apiKeyId"], _encode(v)) for v in views),
                )
                self._set_revision(revision)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _set_revision(self, revision: int) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES ('revision', ?)", (str(revision),)
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
