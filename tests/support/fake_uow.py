"""An in-memory unit of work, so the use cases in ``keyplane.services`` run without a database.

``fake_context()`` is a ``Context`` whose units of work keep every row in a ``FakeStore`` (plain
lists and dicts). A unit of work works on a copy of the store and puts it back only when its block
ends without an exception, so a refused change leaves nothing behind, as a rolled-back transaction
would. What the store records besides rows — the change log, the revisions told to ``on_commit`` —
is there to assert on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, cast

from keyplane.domain.clock import ManualClock
from keyplane.domain.errors import Conflict
from keyplane.domain.model import ApiKey, AuditEvent, ManagementKey, Operator, Team
from keyplane.domain.timefmt import to_micros
from keyplane.services.context import Context
from keyplane.storage.api_keys import ApiKeyQuery
from keyplane.storage.audit import AuditQuery
from keyplane.storage.db import Database
from keyplane.storage.idempotency import IdempotencyRecord
from keyplane.storage.unit_of_work import UnitOfWork


@dataclass(frozen=True, slots=True)
class LoggedChange:
    revision: int
    api_key_id: str
    op: str
    view: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Sealed:
    record: IdempotencyRecord
    api_key_id: str
    create_time: datetime


@dataclass
class FakeStore:
    """Everything the fake units of work have committed."""

    revision: int = 0
    teams: list[Team] = field(default_factory=list)
    management_keys: list[tuple[ManagementKey, str]] = field(default_factory=list)
    api_keys: dict[str, ApiKey] = field(default_factory=dict)
    tombstones: dict[str, tuple[ApiKey, datetime]] = field(default_factory=dict)
    audit: list[AuditEvent] = field(default_factory=list)
    idempotency: dict[str, _Sealed] = field(default_factory=dict)
    operators: list[tuple[Operator, str]] = field(default_factory=list)
    changes: list[LoggedChange] = field(default_factory=list)
    #: Every revision ``on_commit`` was told, in order.
    committed: list[int] = field(default_factory=list)


class _Teams:
    def __init__(self, store: FakeStore) -> None:
        self._s = store

    def add(self, team: Team) -> None:
        if any(t.name == team.name for t in self._s.teams):
            raise Conflict(f"a team named {team.name!r} already exists")
        self._s.teams.append(team)

    def get(self, team_id: str) -> Team | None:
        return next((t for t in self._s.teams if t.team_id == team_id), None)

    def find(self, team_ref: str) -> Team | None:
        return next((t for t in self._s.teams if team_ref in (t.team_id, t.name)), None)

    def all(self) -> list[Team]:
        return sorted(self._s.teams, key=lambda t: (t.create_time, t.team_id))


class _ManagementKeys:
    def __init__(self, store: FakeStore) -> None:
        self._s = store

    def add(self, key: ManagementKey, digest: str) -> None:
        self._s.management_keys.append((key, digest))

    def _live(self, match: Callable[[ManagementKey, str], bool]) -> ManagementKey | None:
        blocked = {t.team_id for t in self._s.teams if t.blocked}
        for key, digest in self._s.management_keys:
            if match(key, digest) and key.revoke_time is None and key.team_id not in blocked:
                return key
        return None

    def live(self, digest: str) -> ManagementKey | None:
        return self._live(lambda _key, d: d == digest)

    def live_by_id(self, key_id: str) -> ManagementKey | None:
        return self._live(lambda key, _d: key.key_id == key_id)

    def all(self, team_id: str | None) -> list[ManagementKey]:
        keys = [k for k, _ in self._s.management_keys if team_id in (None, k.team_id)]
        return sorted(keys, key=lambda k: (k.create_time, k.key_id))

    def revoke(self, key_id: str, now: datetime) -> bool:
        for i, (key, digest) in enumerate(self._s.management_keys):
            if key.key_id == key_id and key.revoke_time is None:
                revoked = replace(key, revoke_time=now, modify_time=now)
                self._s.management_keys[i] = (revoked, digest)
                return True
        return False


class _ApiKeys:
    def __init__(self, store: FakeStore) -> None:
        self._s = store

    def get(self, api_key_id: str, *, team_id: str) -> ApiKey | None:
        key = self._s.api_keys.get(api_key_id)
        return key if key is not None and key.team_id == team_id else None

    def add(self, key: ApiKey, *, now: datetime) -> None:
        assert key.api_key_id not in self._s.api_keys
        self._s.api_keys[key.api_key_id] = key

    def replace(self, key: ApiKey, *, now: datetime) -> None:
        self._s.api_keys[key.api_key_id] = key

    def delete(self, key: ApiKey, *, now: datetime) -> None:
        del self._s.api_keys[key.api_key_id]
        self._s.tombstones[key.api_key_id] = (key, now)

    def purge_tombstones(self, *, before: datetime) -> None:
        for key_id, (_, when) in list(self._s.tombstones.items()):
            if when < before:
                del self._s.tombstones[key_id]

    def page(self, q: ApiKeyQuery) -> list[ApiKey]:
        wanted = set(q.acl_filters)
        name = (q.name_contains or "").lower()

        def keep(k: ApiKey) -> bool:
            return (
                k.team_id == q.team_id
                and (q.after is None or (to_micros(k.create_time), k.api_key_id) > q.after)
                and wanted <= set(k.acl_strings)
                and (q.active_at is None or k.expire_time is None or k.expire_time > q.active_at)
                and name in k.name.lower()
            )

        keys = sorted(
            filter(keep, self._s.api_keys.values()), key=lambda k: (k.create_time, k.api_key_id)
        )
        return keys if q.limit is None else keys[: q.limit]


class _Audit:
    def __init__(self, store: FakeStore) -> None:
        self._s = store

    def append(self, event: AuditEvent) -> None:
        self._s.audit.append(event)

    def page(self, q: AuditQuery) -> list[AuditEvent]:
        text = (q.text or "").lower()

        def keep(e: AuditEvent) -> bool:
            position = (to_micros(e.event_time), e.event_id)
            return (
                e.team_id == q.team_id
                and (q.time_from is None or e.event_time >= q.time_from)
                and (q.time_to is None or e.event_time < q.time_to)
                and (q.user_id is None or e.user_id == q.user_id)
                and any(text in v.lower() for v in (e.description, e.operation, e.entity_id))
                and (
                    q.after is None or (position < q.after if q.descending else position > q.after)
                )
            )

        events = sorted(
            filter(keep, self._s.audit),
            key=lambda e: (e.event_time, e.event_id),
            reverse=q.descending,
        )
        return events[: q.limit]


class _Idempotency:
    def __init__(self, store: FakeStore) -> None:
        self._s = store

    def find(self, *, locators: list[str], since: datetime) -> IdempotencyRecord | None:
        for locator in locators:
            found = self._s.idempotency.get(locator)
            if found is not None and found.create_time >= since:
                return found.record
        return None

    def store(
        self, *, locator: str, api_key_id: str, request_digest: str, sealed: bytes, now: datetime
    ) -> None:
        record = IdempotencyRecord(locator, request_digest, sealed)
        self._s.idempotency[locator] = _Sealed(record, api_key_id, now)

    def erase_answers(self, *, api_key_id: str) -> None:
        for locator, found in self._s.idempotency.items():
            if found.api_key_id == api_key_id:
                erased = replace(found.record, sealed=None)
                self._s.idempotency[locator] = replace(found, record=erased)

    def purge(self, *, before: datetime) -> None:
        for locator, found in list(self._s.idempotency.items()):
            if found.create_time < before:
                del self._s.idempotency[locator]


class _Operators:
    def __init__(self, store: FakeStore) -> None:
        self._s = store

    def add(self, operator: Operator, digest: str) -> None:
        self._s.operators.append((operator, digest))

    def live(self, *, digest: str | None = None, operator_id: str | None = None) -> Operator | None:
        for operator, held in self._s.operators:
            if (
                operator.revoke_time is None
                and digest in (None, held)
                and operator_id in (None, operator.operator_id)
            ):
                return operator
        return None

    def all(self) -> list[Operator]:
        return sorted((o for o, _ in self._s.operators), key=lambda o: o.create_time)

    def revoke(self, operator_id: str, now: datetime) -> bool:
        for i, (operator, digest) in enumerate(self._s.operators):
            if operator.operator_id == operator_id and operator.revoke_time is None:
                self._s.operators[i] = (replace(operator, revoke_time=now), digest)
                return True
        return False


class FakeUnitOfWork(UnitOfWork):
    """A unit of work on ``store`` (the working copy of one transaction)."""

    def __init__(self, store: FakeStore, *, now: datetime) -> None:
        super().__init__(now=now, on_commit=store.committed.append)
        self.store = store
        self.teams = _Teams(store)
        self.management_keys = _ManagementKeys(store)
        self.api_keys = _ApiKeys(store)
        self.audit = _Audit(store)
        self.idempotency = _Idempotency(store)
        self.operators = _Operators(store)

    def next_revision(self) -> int:
        self.store.revision += 1
        return self.store.revision

    def refine_key(self, key: ApiKey) -> ApiKey:
        return key  # no spend in memory: no budget or team block

    def _append_change(self, key: ApiKey, op: str, view: dict[str, Any]) -> None:
        self.store.changes.append(LoggedChange(key.revision, key.api_key_id, op, view))


class _NoDatabase:
    """Stands where a ``Database`` would: a use case that reaches past its unit of work fails."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the in-memory context has no database (asked for {name!r})")


@dataclass
class FakeWorld:
    """The committed store and a ``Context`` whose use cases run on it."""

    store: FakeStore
    ctx: Context
    clock: ManualClock


def fake_context(clock: ManualClock | None = None, **settings: Any) -> FakeWorld:
    """An in-memory ``Context`` (``settings``: any other ``Context`` field)."""
    store = FakeStore()
    manual = clock or ManualClock()
    world = FakeWorld(store, cast(Context, None), manual)

    @contextmanager
    def units(_write: bool) -> Iterator[UnitOfWork]:
        working = copy.deepcopy(world.store)
        uow = FakeUnitOfWork(working, now=manual.now())
        yield uow  # an exception skips the rest: the working copy is dropped
        world.store = working
        uow.committed()

    world.ctx = Context(
        db=cast(Database, _NoDatabase()),
        server_secret=b"s" * 32,
        clock=manual,
        units=units,
        **settings,
    )
    return world
