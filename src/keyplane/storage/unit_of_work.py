"""The unit of work: one transaction, and what every change owes besides its own rows.

A use case opens one (``with ctx.write() as uow``), reads and writes through its stores
(``uow.api_keys``, ``uow.teams`` ...), and says what happened: ``uow.key_changed(...)`` for an
API key (its change-log row at the key's revision, its audit event, and — once the transaction has
committed — ``on_commit`` with the newest revision, which wakes the gateways' feed),
``uow.key_revised(...)`` for a key changed by no one's request (a budget or spending-limit block:
the same without the audit event, which the block records once for all its keys), or
``uow.record(...)`` for an audit event alone. Nobody else builds an ``AuditEvent`` or a change-log
row. ``now`` is the transaction's one time: every row it writes carries it.

``SqlUnitOfWork`` runs on a ``Connection`` of ``keyplane.storage.db``; tests of the use cases run
the same code on an in-memory one (``tests/support/fake_uow.py``), which is why the stores are
protocols here.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection

from keyplane.domain.clock import Clock
from keyplane.domain.model import (
    ApiKey,
    AuditEvent,
    ManagementKey,
    Operator,
    Team,
    enforcement_view,
)
from keyplane.storage import changelog
from keyplane.storage.api_keys import ApiKeyQuery, ApiKeys
from keyplane.storage.audit import AuditLog, AuditQuery
from keyplane.storage.db import Database
from keyplane.storage.idempotency import IdempotencyRecord, IdempotencyRecords
from keyplane.storage.management_keys import ManagementKeys
from keyplane.storage.operators import Operators
from keyplane.storage.teams import Teams

# -- the stores a unit of work holds, one per aggregate -------------------------------------------


class TeamStore(Protocol):
    def add(self, team: Team) -> None:
        """Raises ``Conflict`` if the name is taken."""

    def get(self, team_id: str) -> Team | None: ...
    def find(self, team_ref: str) -> Team | None: ...
    def all(self) -> list[Team]: ...


class ManagementKeyStore(Protocol):
    def add(self, key: ManagementKey, digest: str) -> None: ...
    def live(self, digest: str) -> ManagementKey | None: ...
    def live_by_id(self, key_id: str) -> ManagementKey | None: ...
    def all(self, team_id: str | None) -> list[ManagementKey]: ...
    def revoke(self, key_id: str, now: datetime) -> bool: ...


class ApiKeyStore(Protocol):
    def get(self, api_key_id: str, *, team_id: str) -> ApiKey | None: ...
    def add(self, key: ApiKey, *, now: datetime) -> None: ...
    def replace(self, key: ApiKey, *, now: datetime) -> None: ...
    def delete(self, key: ApiKey, *, now: datetime) -> None: ...
    def purge_tombstones(self, *, before: datetime) -> None: ...
    def page(self, q: ApiKeyQuery) -> list[ApiKey]: ...


class AuditStore(Protocol):
    def append(self, event: AuditEvent) -> None: ...
    def page(self, q: AuditQuery) -> list[AuditEvent]: ...


class IdempotencyStore(Protocol):
    def find(self, *, locators: list[str], since: datetime) -> IdempotencyRecord | None: ...
    def store(
        self, *, locator: str, api_key_id: str, request_digest: str, sealed: bytes, now: datetime
    ) -> None: ...
    def erase_answers(self, *, api_key_id: str) -> None: ...
    def purge(self, *, before: datetime) -> None: ...


class OperatorStore(Protocol):
    def add(self, operator: Operator, digest: str) -> None: ...
    def live(
        self, *, digest: str | None = None, operator_id: str | None = None
    ) -> Operator | None: ...
    def all(self) -> list[Operator]: ...
    def revoke(self, operator_id: str, now: datetime) -> bool: ...


#: What a key write makes of a key before it is stored (the budgets' block times, set by
#: ``keyplane.usage.budgets.refine``); given the transaction's connection and time.
KeyRefiner = Callable[[Connection, ApiKey, datetime], ApiKey]


class UnitOfWork(ABC):
    """One transaction's stores, and the records every change carries."""

    teams: TeamStore
    management_keys: ManagementKeyStore
    api_keys: ApiKeyStore
    audit: AuditStore
    idempotency: IdempotencyStore
    operators: OperatorStore

    def __init__(self, *, now: datetime, on_commit: Callable[[int], None]) -> None:
        self.now = now
        self._on_commit = on_commit
        self._revisions: list[int] = []

    @abstractmethod
    def next_revision(self) -> int:
        """Take the next deployment-wide revision (held, and so ordered, until commit)."""

    @abstractmethod
    def refine_key(self, key: ApiKey) -> ApiKey:
        """``key`` as it is stored: with the block times its budget and its team's spend say."""

    @abstractmethod
    def _append_change(self, key: ApiKey, op: str, view: dict[str, Any]) -> None:
        """The change-log row of ``key`` at ``key.revision``."""

    def key_changed(
        self, key: ApiKey, *, by: str, operation: str, description: str, deleted: bool = False
    ) -> None:
        """``key`` (already written at ``key.revision``) changed: its change-log row, its audit
        event by user ``by``, and the feed woken once this transaction has committed."""
        if deleted:
            view = {"apiKeyId": key.api_key_id, "teamId": key.team_id, "deleted": True}
            self._append_change(key, "delete", view)
            self._revisions.append(key.revision)
        else:
            self.key_revised(key)
        self.record(
            team_id=key.team_id,
            user_id=by,
            operation=operation,
            entity_type="API_KEY",
            entity_id=key.api_key_id,
            description=description,
        )

    def key_revised(self, key: ApiKey) -> None:
        """``key`` (already written at ``key.revision``) changed: its change-log row, and the feed
        woken once this transaction has committed."""
        self._append_change(key, "upsert", enforcement_view(key))
        self._revisions.append(key.revision)

    def record(
        self,
        *,
        team_id: str,
        user_id: str,
        operation: str,
        entity_type: str,
        entity_id: str,
        description: str,
    ) -> None:
        """An audit event: ``user_id`` did ``operation`` to the entity, now."""
        self.audit.append(
            AuditEvent(
                event_id=str(uuid.uuid4()),
                team_id=team_id,
                event_time=self.now,
                user_id=user_id,
                operation=operation,
                entity_type=entity_type,
                entity_id=entity_id,
                description=description,
            )
        )

    def committed(self) -> None:
        """The transaction has committed: tell ``on_commit`` its newest revision, if any."""
        if self._revisions:
            self._on_commit(max(self._revisions))


def _keep(_conn: Connection, key: ApiKey, _now: datetime) -> ApiKey:
    return key


class SqlUnitOfWork(UnitOfWork):
    """A unit of work on one transaction of a ``Database`` (SQLite or PostgreSQL)."""

    def __init__(
        self,
        conn: Connection,
        *,
        now: datetime,
        on_commit: Callable[[int], None],
        refine: KeyRefiner = _keep,
    ) -> None:
        super().__init__(now=now, on_commit=on_commit)
        self.conn = conn
        self._refine = refine
        self.teams = Teams(conn)
        self.management_keys = ManagementKeys(conn)
        self.api_keys = ApiKeys(conn)
        self.audit = AuditLog(conn)
        self.idempotency = IdempotencyRecords(conn)
        self.operators = Operators(conn)

    def next_revision(self) -> int:
        return changelog.next_revision(self.conn)

    def refine_key(self, key: ApiKey) -> ApiKey:
        return self._refine(self.conn, key, self.now)

    def _append_change(self, key: ApiKey, op: str, view: dict[str, Any]) -> None:
        changelog.append_change(
            self.conn,
            revision=key.revision,
            api_key_id=key.api_key_id,
            team_id=key.team_id,
            op=op,
            view=view,
            now=self.now,
        )


@contextmanager
def unit_of_work(
    db: Database,
    *,
    write: bool,
    clock: Clock,
    on_commit: Callable[[int], None],
    refine: KeyRefiner = _keep,
    here: bool = False,
    one_statement: bool = False,
) -> Iterator[SqlUnitOfWork]:
    """A unit of work on a write transaction (``write``) or a read one (``here``: on the calling
    thread's own connection, ``Database.read_here``, for ``one_statement`` or more); committed
    when the block ends without an exception, rolled back (and ``on_commit`` not called) when it
    raises."""
    with (
        db.write() if write else db.read_here(one_statement=one_statement) if here else db.read()
    ) as conn:
        uow = SqlUnitOfWork(conn, now=clock.now(), on_commit=on_commit, refine=refine)
        yield uow
    db.after_commit(uow.committed)
