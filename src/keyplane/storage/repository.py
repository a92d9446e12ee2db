"""Reads and writes of keyplane's objects, as functions over a SQLAlchemy ``Connection``.

No business rules here (that is ``keyplane.services``); just rows in, domain objects out, in
dialect-neutral Core so SQLite and PostgreSQL share every line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)

from keyplane.domain.model import (
    ApiKey,
    AuditEvent,
    ManagementKey,
    Operator,
    SecretDigest,
    Team,
)
from keyplane.domain.timefmt import from_micros, to_micros
from keyplane.storage import tables as t

#: The PostgreSQL NOTIFY channel that announces committed revisions.
CHANGES_CHANNEL = "keyplane_changes"


def _us(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def _dt(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


# -- revisions and the change log ------------------------------------------------------------


# Statements built once: building a Core statement per call costs more than running it.
_BUMP_REVISION = update(t.revision_counter).values(value=t.revision_counter.c.value + 1)
_READ_REVISION = select(t.revision_counter.c.value)
_INSERT_CHANGE = insert(t.change_log)
_INSERT_AUDIT = insert(t.audit_events)
_INSERT_KEY = insert(t.api_keys)


def next_revision(conn: Connection) -> int:
    """Take the next deployment-wide revision; the row stays locked until this transaction ends."""
    conn.execute(_BUMP_REVISION)
    return int(conn.execute(_READ_REVISION).scalar_one())


def current_revision(conn: Connection) -> int:
    return int(conn.execute(_READ_REVISION).scalar_one())


def append_change(
    conn: Connection,
    *,
    revision: int,
    api_key_id: str,
    team_id: str,
    op: str,
    view: dict[str, Any],
    now: datetime,
) -> None:
    conn.execute(
        _INSERT_CHANGE,
        {
            "revision": revision,
            "api_key_id": api_key_id,
            "team_id": team_id,
            "op": op,
            "view": json.dumps(view, separators=(",", ":")),
            "commit_time": to_micros(now),
        },
    )
    if conn.dialect.name == "postgresql":
        # Delivered at commit, to every control plane LISTENing: their feed followers wake.
        conn.execute(select(func.pg_notify(CHANGES_CHANNEL, str(revision))))


# -- teams and management keys ----------------------------------------------------------------


def insert_team(conn: Connection, team: Team) -> None:
    conn.execute(
        insert(t.teams).values(
            team_id=team.team_id,
            name=team.name,
            create_time=to_micros(team.create_time),
            blocked=team.blocked,
        )
    )


def _team(row: Row[Any]) -> Team:
    return Team(
        team_id=row.team_id,
        name=row.name,
        create_time=from_micros(row.create_time),
        blocked=bool(row.blocked),
    )


def list_teams(conn: Connection) -> list[Team]:
    rows = conn.execute(select(t.teams).order_by(t.teams.c.create_time, t.teams.c.team_id))
    return [_team(r) for r in rows]


def find_team(conn: Connection, team_ref: str) -> Team | None:
    row = conn.execute(
        select(t.teams).where(or_(t.teams.c.team_id == team_ref, t.teams.c.name == team_ref))
    ).first()
    return None if row is None else _team(row)


def get_team(conn: Connection, team_id: str) -> Team | None:
    row = conn.execute(select(t.teams).where(t.teams.c.team_id == team_id)).first()
    return None if row is None else _team(row)


def insert_management_key(conn: Connection, key: ManagementKey, digest: str) -> None:
    conn.execute(
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
        revoke_time=_dt(row.revoke_time),
    )


_LIVE_MANAGEMENT_KEY = (
    select(t.management_keys)
    .join(t.teams, t.teams.c.team_id == t.management_keys.c.team_id)
    .where(
        t.management_keys.c.digest == bindparam("digest"),
        t.management_keys.c.revoke_time.is_(None),
        t.teams.c.blocked.is_(False),
    )
)


def live_management_key(conn: Connection, digest: str) -> ManagementKey | None:
    """The management key with this digest, unless it is revoked or its team blocked."""
    row = conn.execute(_LIVE_MANAGEMENT_KEY, {"digest": digest}).first()
    return None if row is None else _management_key(row)


_LIVE_MANAGEMENT_KEY_BY_ID = (
    select(t.management_keys)
    .join(t.teams, t.teams.c.team_id == t.management_keys.c.team_id)
    .where(
        t.management_keys.c.key_id == bindparam("key_id"),
        t.management_keys.c.revoke_time.is_(None),
        t.teams.c.blocked.is_(False),
    )
)


def live_management_key_by_id(conn: Connection, key_id: str) -> ManagementKey | None:
    """``live_management_key`` by id: for a session that names its key without its secret."""
    row = conn.execute(_LIVE_MANAGEMENT_KEY_BY_ID, {"key_id": key_id}).first()
    return None if row is None else _management_key(row)


def list_management_keys(conn: Connection, team_id: str | None) -> list[ManagementKey]:
    query = select(t.management_keys).order_by(
        t.management_keys.c.create_time, t.management_keys.c.key_id
    )
    if team_id is not None:
        query = query.where(t.management_keys.c.team_id == team_id)
    return [_management_key(r) for r in conn.execute(query)]


def revoke_management_key(conn: Connection, key_id: str, now: datetime) -> bool:
    result = conn.execute(
        update(t.management_keys)
        .where(t.management_keys.c.key_id == key_id, t.management_keys.c.revoke_time.is_(None))
        .values(revoke_time=to_micros(now), modify_time=to_micros(now))
    )
    return result.rowcount == 1


# -- API keys -----------------------------------------------------------------------------------


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
        expire_time=_dt(row.expire_time),
        qps=row.qps,
        qpm=row.qpm,
        tpm=row.tpm,
        acl_strings=tuple(json.loads(row.acls)),
        revision=int(row.revision),
        secrets=tuple(secrets),
        budget_cents=row.budget_cents,
        budget_period=row.budget_period,
        budget_blocked_until=_dt(row.budget_blocked_until),
        team_blocked_until=_dt(row.team_blocked_until),
    )


def _api_key_values(key: ApiKey) -> dict[str, Any]:
    return {
        "team_id": key.team_id,
        "user_id": key.user_id,
        "name": key.name,
        "redacted": key.redacted,
        "create_time": to_micros(key.create_time),
        "modify_time": to_micros(key.modify_time),
        "modified_by": key.modified_by,
        "disabled": key.disabled,
        "expire_time": _us(key.expire_time),
        "qps": key.qps,
        "qpm": key.qpm,
        "tpm": key.tpm,
        "acls": json.dumps(list(key.acl_strings)),
        "revision": key.revision,
        "budget_cents": key.budget_cents,
        "budget_period": key.budget_period,
        "budget_blocked_until": _us(key.budget_blocked_until),
        "team_blocked_until": _us(key.team_blocked_until),
    }


def get_api_key(conn: Connection, api_key_id: str, *, team_id: str) -> ApiKey | None:
    """The key, if it exists *and* belongs to ``team_id``; other teams' keys do not exist."""
    row = conn.execute(
        select(t.api_keys).where(
            t.api_keys.c.api_key_id == api_key_id, t.api_keys.c.team_id == team_id
        )
    ).first()
    if row is None:
        return None
    secrets = conn.execute(
        select(t.api_key_secrets.c.digest, t.api_key_secrets.c.expire_time)
        .where(t.api_key_secrets.c.api_key_id == api_key_id)
        .order_by(t.api_key_secrets.c.create_time.desc())
    )
    return _api_key(row, [SecretDigest(s.digest, _dt(s.expire_time)) for s in secrets])


def insert_api_key(conn: Connection, key: ApiKey, *, now: datetime) -> None:
    conn.execute(_INSERT_KEY, {"api_key_id": key.api_key_id, **_api_key_values(key)})
    _write_acls(conn, key)
    _write_secrets(conn, key, now=now)


def replace_api_key(conn: Connection, key: ApiKey, *, now: datetime) -> None:
    conn.execute(
        update(t.api_keys)
        .where(t.api_keys.c.api_key_id == key.api_key_id)
        .values(**_api_key_values(key))
    )
    conn.execute(delete(t.api_key_acls).where(t.api_key_acls.c.api_key_id == key.api_key_id))
    _write_acls(conn, key)
    conn.execute(delete(t.api_key_secrets).where(t.api_key_secrets.c.api_key_id == key.api_key_id))
    _write_secrets(conn, key, now=now)


def _write_acls(conn: Connection, key: ApiKey) -> None:
    if key.acl_strings:
        conn.execute(
            insert(t.api_key_acls),
            [{"api_key_id": key.api_key_id, "acl": acl} for acl in key.acl_strings],
        )


def _write_secrets(conn: Connection, key: ApiKey, *, now: datetime) -> None:
    if key.secrets:
        conn.execute(
            insert(t.api_key_secrets),
            [
                {
                    "digest": s.digest,
                    "api_key_id": key.api_key_id,
                    "create_time": to_micros(now) - i,  # newest first on read
                    "expire_time": _us(s.expire_time),
                }
                for i, s in enumerate(key.secrets)
            ],
        )


def delete_api_key(conn: Connection, key: ApiKey, *, revision: int, now: datetime) -> None:
    conn.execute(delete(t.api_keys).where(t.api_keys.c.api_key_id == key.api_key_id))
    conn.execute(
        insert(t.deleted_api_keys).values(
            api_key_id=key.api_key_id,
            team_id=key.team_id,
            revision=revision,
            delete_time=to_micros(now),
        )
    )


def get_deleted_api_key(
    conn: Connection, api_key_id: str, *, team_id: str, since: datetime
) -> int | None:
    """The revision of a deletion newer than ``since``, if ``team_id`` deleted that key."""
    value = conn.execute(
        select(t.deleted_api_keys.c.revision).where(
            t.deleted_api_keys.c.api_key_id == api_key_id,
            t.deleted_api_keys.c.team_id == team_id,
            t.deleted_api_keys.c.delete_time >= to_micros(since),
        )
    ).scalar_one_or_none()
    return None if value is None else int(value)


def purge_tombstones(conn: Connection, *, before: datetime) -> None:
    conn.execute(
        delete(t.deleted_api_keys).where(t.deleted_api_keys.c.delete_time < to_micros(before))
    )


def list_api_keys(
    conn: Connection,
    *,
    team_id: str,
    after: tuple[int, str] | None,
    limit: int | None,
    acl_filters: Iterable[str] = (),
    active_at: datetime | None = None,
    name_contains: str | None = None,
) -> list[ApiKey]:
    """A team's keys in (createTime, apiKeyId) order, from just after ``after``."""
    k = t.api_keys
    query = select(k).where(k.c.team_id == team_id)
    if name_contains:
        query = query.where(k.c.name.icontains(name_contains, autoescape=True))
    if after is not None:
        # A row-value comparison, so the (team, create_time, id) index serves it as a range:
        # with OR-ed conditions SQLite scans the team's keys from the start on every page.
        query = query.where(tuple_(k.c.create_time, k.c.api_key_id) > tuple_(*after))
    for acl in acl_filters:
        query = query.where(
            exists().where(
                t.api_key_acls.c.api_key_id == k.c.api_key_id, t.api_key_acls.c.acl == acl
            )
        )
    if active_at is not None:
        query = query.where(or_(k.c.expire_time.is_(None), k.c.expire_time > to_micros(active_at)))
    query = query.order_by(k.c.create_time, k.c.api_key_id)
    if limit is not None:
        query = query.limit(limit)
    return [_api_key(row) for row in conn.execute(query)]


def count_api_keys(conn: Connection, team_id: str) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(t.api_keys).where(t.api_keys.c.team_id == team_id)
        ).scalar_one()
    )


# -- audit ----------------------------------------------------------------------------------------


def append_audit(conn: Connection, event: AuditEvent) -> None:
    conn.execute(
        _INSERT_AUDIT,
        {
            "event_id": event.event_id,
            "team_id": event.team_id,
            "event_time": to_micros(event.event_time),
            "user_id": event.user_id,
            "operation": event.operation,
            "entity_type": event.entity_type,
            "entity_id": event.entity_id,
            "description": event.description,
        },
    )


@dataclass(frozen=True, slots=True)
class AuditQuery:
    team_id: str
    after: tuple[int, str] | None = None
    limit: int = 100
    time_from: datetime | None = None
    time_to: datetime | None = None
    text: str | None = None
    user_id: str | None = None
    descending: bool = False


def list_audit_events(conn: Connection, q: AuditQuery) -> list[AuditEvent]:
    a = t.audit_events
    query = select(a).where(a.c.team_id == q.team_id)
    if q.time_from is not None:
        query = query.where(a.c.event_time >= to_micros(q.time_from))
    if q.time_to is not None:
        query = query.where(a.c.event_time < to_micros(q.time_to))
    if q.user_id is not None:
        query = query.where(a.c.user_id == q.user_id)
    if q.text:
        text = q.text.lower()
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        # lower() on both sides: LIKE ignores case on SQLite but not on PostgreSQL.
        query = query.where(
            or_(
                func.lower(a.c.description).like(pattern, escape="\\"),
                func.lower(a.c.operation).like(pattern, escape="\\"),
                func.lower(a.c.entity_id).like(pattern, escape="\\"),
            )
        )
    if q.after is not None:
        position = tuple_(a.c.event_time, a.c.event_id)
        after = tuple_(*q.after)
        query = query.where(position < after if q.descending else position > after)
    if q.descending:
        query = query.order_by(a.c.event_time.desc(), a.c.event_id.desc())
    else:
        query = query.order_by(a.c.event_time, a.c.event_id)
    rows = conn.execute(query.limit(q.limit))
    return [
        AuditEvent(
            event_id=r.event_id,
            team_id=r.team_id,
            event_time=from_micros(r.event_time),
            user_id=r.user_id,
            operation=r.operation,
            entity_type=r.entity_type,
            entity_id=r.entity_id,
            description=r.description,
        )
        for r in rows
    ]


# -- idempotency --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    locator: str
    request_digest: str
    #: None once the key it created was rotated or deleted.
    sealed: bytes | None


def find_idempotent(
    conn: Connection, *, locators: list[str], since: datetime
) -> IdempotencyRecord | None:
    c = t.idempotency_keys.c
    row = conn.execute(
        select(c.locator, c.request_digest, c.sealed_response).where(
            c.locator.in_(locators), c.create_time >= to_micros(since)
        )
    ).first()
    if row is None:
        return None
    sealed = None if row.sealed_response is None else bytes(row.sealed_response)
    return IdempotencyRecord(row.locator, row.request_digest, sealed)


def store_idempotent(
    conn: Connection,
    *,
    locator: str,
    api_key_id: str,
    request_digest: str,
    sealed: bytes,
    now: datetime,
) -> None:
    # A row older than the window may still sit under the same locator: replace it.
    conn.execute(delete(t.idempotency_keys).where(t.idempotency_keys.c.locator == locator))
    conn.execute(
        insert(t.idempotency_keys).values(
            locator=locator,
            api_key_id=api_key_id,
            request_digest=request_digest,
            sealed_response=sealed,
            create_time=to_micros(now),
        )
    )


def erase_idempotent_answers(conn: Connection, *, api_key_id: str) -> None:
    conn.execute(
        update(t.idempotency_keys)
        .where(t.idempotency_keys.c.api_key_id == api_key_id)
        .values(sealed_response=None)
    )


def purge_idempotency(conn: Connection, *, before: datetime) -> None:
    conn.execute(
        delete(t.idempotency_keys).where(t.idempotency_keys.c.create_time < to_micros(before))
    )


# -- propagation: the change feed, cluster credentials, gateway acks -----------------------------


@dataclass(frozen=True, slots=True)
class Change:
    revision: int
    op: str
    view: dict[str, Any]


def changes_after(conn: Connection, revision: int, limit: int) -> list[Change]:
    rows = conn.execute(
        select(t.change_log.c.revision, t.change_log.c.op, t.change_log.c.view)
        .where(t.change_log.c.revision > revision)
        .order_by(t.change_log.c.revision)
        .limit(limit)
    )
    return [Change(int(r.revision), r.op, json.loads(r.view)) for r in rows]


def oldest_retained_revision(conn: Connection) -> int | None:
    value = conn.execute(select(func.min(t.change_log.c.revision))).scalar_one_or_none()
    return None if value is None else int(value)


def compact_change_log(conn: Connection, *, through_revision: int) -> int:
    result = conn.execute(delete(t.change_log).where(t.change_log.c.revision <= through_revision))
    return int(result.rowcount)


def iter_api_key_views(conn: Connection) -> Iterable[ApiKey]:
    """Every key with its secrets, streamed in id order (for snapshots)."""
    secrets: dict[str, list[SecretDigest]] = {}
    for s in conn.execute(
        select(
            t.api_key_secrets.c.api_key_id,
            t.api_key_secrets.c.digest,
            t.api_key_secrets.c.expire_time,
        ).order_by(t.api_key_secrets.c.api_key_id, t.api_key_secrets.c.create_time.desc())
    ):
        secrets.setdefault(s.api_key_id, []).append(SecretDigest(s.digest, _dt(s.expire_time)))
    result = conn.execution_options(yield_per=2000).execute(
        select(t.api_keys).order_by(t.api_keys.c.api_key_id)
    )
    for row in result:
        yield _api_key(row, secrets.get(row.api_key_id, ()))


def key_revision(conn: Connection, api_key_id: str, *, team_id: str, since: datetime) -> int | None:
    """The latest revision of a live key of ``team_id``, or of its deletion within the window."""
    value = conn.execute(
        select(t.api_keys.c.revision).where(
            t.api_keys.c.api_key_id == api_key_id, t.api_keys.c.team_id == team_id
        )
    ).scalar_one_or_none()
    if value is not None:
        return int(value)
    return get_deleted_api_key(conn, api_key_id, team_id=team_id, since=since)


def insert_cluster_credential(
    conn: Connection, *, digest: str, cluster: str, now: datetime
) -> None:
    conn.execute(
        insert(t.cluster_credentials).values(
            digest=digest, cluster=cluster, create_time=to_micros(now), revoke_time=None
        )
    )


def cluster_of_credential(conn: Connection, digest: str) -> str | None:
    row = conn.execute(
        select(t.cluster_credentials.c.cluster).where(
            t.cluster_credentials.c.digest == digest,
            t.cluster_credentials.c.revoke_time.is_(None),
        )
    ).first()
    return None if row is None else str(row.cluster)


def credential_binding(conn: Connection, digest: str) -> tuple[str, str | None] | None:
    """``(cluster, bound gateway id)`` of a live credential."""
    c = t.cluster_credentials.c
    row = conn.execute(
        select(c.cluster, c.gateway_id).where(c.digest == digest, c.revoke_time.is_(None))
    ).first()
    return None if row is None else (str(row.cluster), row.gateway_id)


def bind_credential(
    conn: Connection, *, digest: str, gateway_id: str, silent_before: datetime
) -> bool:
    """Bind the credential to ``gateway_id`` unless it speaks for another gateway seen since
    ``silent_before``; a gateway silent longer is replaced (and forgotten). False: refused."""
    c = t.cluster_credentials.c
    bound = conn.execute(select(c.gateway_id).where(c.digest == digest)).scalar_one_or_none()
    if bound == gateway_id:
        return True
    if bound is not None:
        seen = conn.execute(
            select(t.gateways.c.last_seen).where(t.gateways.c.gateway_id == bound)
        ).scalar_one_or_none()
        if seen is not None and seen >= to_micros(silent_before):
            return False
        conn.execute(delete(t.gateways).where(t.gateways.c.gateway_id == bound))
    taken = conn.execute(
        select(c.digest).where(c.gateway_id == gateway_id, c.digest != digest)
    ).first()
    if taken is not None:
        return False  # another credential's gateway: one id, one credential
    conn.execute(
        update(t.cluster_credentials).where(c.digest == digest).values(gateway_id=gateway_id)
    )
    return True


@dataclass(frozen=True, slots=True)
class GatewayState:
    gateway_id: str
    cluster: str
    applied_revision: int
    first_seen: datetime
    last_seen: datetime


def record_ack(
    conn: Connection, *, gateway_id: str, cluster: str, revision: int, now: datetime
) -> int:
    """The gateway says it has applied ``revision``: believed up to what it was served and the
    head. Returns the applied revision recorded."""
    now_us = to_micros(now)
    g = t.gateways.c
    row = conn.execute(
        select(g.applied_revision, g.served_revision).where(g.gateway_id == gateway_id)
    ).first()
    served = 0 if row is None else int(row.served_revision)
    believed = revision <= min(served, current_revision(conn))
    applied = revision if believed else (0 if row is None else int(row.applied_revision))
    if row is None:
        conn.execute(
            insert(t.gateways).values(
                gateway_id=gateway_id,
                cluster=cluster,
                applied_revision=applied,
                first_seen=now_us,
                last_seen=now_us,
                served_revision=0,
            )
        )
    else:
        conn.execute(
            update(t.gateways)
            .where(g.gateway_id == gateway_id)
            .values(cluster=cluster, applied_revision=applied, last_seen=now_us)
        )
    return applied


def record_served(
    conn: Connection, *, gateway_id: str, cluster: str, revision: int, now: datetime
) -> None:
    """The control plane sent ``gateway_id`` everything up to ``revision`` (a snapshot or a batch
    of changes); a gateway's first snapshot registers it."""
    updated = conn.execute(
        update(t.gateways)
        .where(t.gateways.c.gateway_id == gateway_id)
        .values(served_revision=revision)
    )
    if updated.rowcount == 0:
        now_us = to_micros(now)
        conn.execute(
            insert(t.gateways).values(
                gateway_id=gateway_id,
                cluster=cluster,
                applied_revision=0,
                first_seen=now_us,
                last_seen=now_us,
                served_revision=revision,
            )
        )


def list_gateways(conn: Connection) -> list[GatewayState]:
    rows = conn.execute(select(t.gateways).order_by(t.gateways.c.cluster, t.gateways.c.gateway_id))
    return [
        GatewayState(
            gateway_id=r.gateway_id,
            cluster=r.cluster,
            applied_revision=int(r.applied_revision),
            first_seen=from_micros(r.first_seen),
            last_seen=from_micros(r.last_seen),
        )
        for r in rows
    ]


def forget_gateways(conn: Connection, *, last_seen_before: datetime) -> None:
    conn.execute(delete(t.gateways).where(t.gateways.c.last_seen < to_micros(last_seen_before)))


# -- operators ------------------------------------------------------------------------------------


def insert_operator(conn: Connection, operator: Operator, digest: str) -> None:
    conn.execute(
        insert(t.operators).values(
            operator_id=operator.operator_id,
            name=operator.name,
            digest=digest,
            redacted=operator.redacted,
            create_time=to_micros(operator.create_time),
        )
    )


def _operator(row: Row[Any]) -> Operator:
    return Operator(
        operator_id=row.operator_id,
        name=row.name,
        redacted=row.redacted,
        create_time=from_micros(row.create_time),
        revoke_time=_dt(row.revoke_time),
    )


def live_operator(
    conn: Connection, *, digest: str | None = None, operator_id: str | None = None
) -> Operator | None:
    """The unrevoked operator with this digest (sign-in) or id (a session naming it)."""
    o = t.operators
    query = select(o).where(o.c.revoke_time.is_(None))
    if digest is not None:
        query = query.where(o.c.digest == digest)
    if operator_id is not None:
        query = query.where(o.c.operator_id == operator_id)
    row = conn.execute(query).first()
    return None if row is None else _operator(row)


def list_operators(conn: Connection) -> list[Operator]:
    o = t.operators
    return [_operator(r) for r in conn.execute(select(o).order_by(o.c.create_time))]


def revoke_operator(conn: Connection, operator_id: str, now: datetime) -> bool:
    o = t.operators
    result = conn.execute(
        update(o)
        .where(o.c.operator_id == operator_id, o.c.revoke_time.is_(None))
        .values(revoke_time=to_micros(now))
    )
    return result.rowcount == 1
