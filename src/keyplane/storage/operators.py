"""Operators: the console's deployment-wide credentials, stored by digest."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from keyplane.domain.model import Operator
from keyplane.domain.timefmt import from_micros, to_micros
from keyplane.storage import tables as t
from keyplane.storage._convert import time_or_none


def _operator(row: Row[Any]) -> Operator:
    return Operator(
        operator_id=row.operator_id,
        name=row.name,
        redacted=row.redacted,
        create_time=from_micros(row.create_time),
        revoke_time=time_or_none(row.revoke_time),
    )


class Operators:
    """The operators, read and written in the transaction of ``conn``."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, operator: Operator, digest: str) -> None:
        self._conn.execute(
            insert(t.operators).values(
                operator_id=operator.operator_id,
                name=operator.name,
                digest=digest,
                redacted=operator.redacted,
                create_time=to_micros(operator.create_time),
            )
        )

    def live(self, *, digest: str | None = None, operator_id: str | None = None) -> Operator | None:
        """The unrevoked operator with this digest (sign-in) or id (a session naming it)."""
        o = t.operators
        query = select(o).where(o.c.revoke_time.is_(None))
        if digest is not None:
            query = query.where(o.c.digest == digest)
        if operator_id is not None:
            query = query.where(o.c.operator_id == operator_id)
        row = self._conn.execute(query).first()
        return None if row is None else _operator(row)

    def all(self) -> list[Operator]:
        o = t.operators
        return [_operator(r) for r in self._conn.execute(select(o).order_by(o.c.create_time))]

    def revoke(self, operator_id: str, now: datetime) -> bool:
        """False: there is no such operator, or it is revoked already."""
        o = t.operators
        result = self._conn.execute(
            update(o)
            .where(o.c.operator_id == operator_id, o.c.revoke_time.is_(None))
            .values(revoke_time=to_micros(now))
        )
        return result.rowcount == 1
