"""The audit log: one event per change a person (or the billing job) made, searchable per team."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, insert, or_, select, tuple_

from keyplane.domain.model import AuditEvent
from keyplane.domain.timefmt import from_micros, to_micros
from keyplane.storage import driver
from keyplane.storage import tables as t

_INSERT_AUDIT = insert(t.audit_events)


def append_audit(conn: Connection, event: AuditEvent) -> None:
    driver.insert(
        conn,
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


class AuditLog:
    """The audit events, read and written in the transaction of ``conn``."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def append(self, event: AuditEvent) -> None:
        append_audit(self._conn, event)

    def page(self, q: AuditQuery) -> list[AuditEvent]:
        """A team's events matching ``q``, in time order (then id), from just past ``q.after``."""
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
        rows = self._conn.execute(query.limit(q.limit))
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
