"""Teams: the tenants every key, management key and audit event belongs to."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, insert, or_, select
from sqlalchemy.exc import IntegrityError

from keyplane.domain.errors import Conflict
from keyplane.domain.model import Team
from keyplane.domain.timefmt import from_micros, to_micros
from keyplane.storage import tables as t


def _team(row: Row[Any]) -> Team:
    return Team(
        team_id=row.team_id,
        name=row.name,
        create_time=from_micros(row.create_time),
        blocked=bool(row.blocked),
    )


class Teams:
    """The teams, read and written in the transaction of ``conn``."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, team: Team) -> None:
        """Raises ``Conflict`` if the name is taken (the transaction is then done for)."""
        try:
            self._conn.execute(
                insert(t.teams).values(
                    team_id=team.team_id,
                    name=team.name,
                    create_time=to_micros(team.create_time),
                    blocked=team.blocked,
                )
            )
        except IntegrityError:
            raise Conflict(f"a team named {team.name!r} already exists") from None

    def get(self, team_id: str) -> Team | None:
        row = self._conn.execute(select(t.teams).where(t.teams.c.team_id == team_id)).first()
        return None if row is None else _team(row)

    def find(self, team_ref: str) -> Team | None:
        """The team with this id or name."""
        row = self._conn.execute(
            select(t.teams).where(or_(t.teams.c.team_id == team_ref, t.teams.c.name == team_ref))
        ).first()
        return None if row is None else _team(row)

    def all(self) -> list[Team]:
        rows = self._conn.execute(
            select(t.teams).order_by(t.teams.c.create_time, t.teams.c.team_id)
        )
        return [_team(r) for r in rows]
