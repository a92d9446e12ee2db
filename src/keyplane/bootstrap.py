"""First start of a deployment: a team and a management key, the secret shown once.

The secret is printed once and written to ``<data_dir>/bootstrap-management-key``, readable only by
its owner, so an operator who missed the terminal can still pick it up (and should delete it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from keyplane.private_files import write_private
from keyplane.services import admin
from keyplane.services.context import Context

BOOTSTRAP_FILE = "bootstrap-management-key"


@dataclass(frozen=True, slots=True)
class Bootstrap:
    team_id: str
    team_name: str
    secret: str | None  # None: not new; the secret was shown on the first start
    path: Path


def ensure(ctx: Context, data_dir: Path) -> Bootstrap:
    path = data_dir / BOOTSTRAP_FILE
    teams = admin.list_teams(ctx)
    if teams:
        return Bootstrap(teams[0].team_id, teams[0].name, None, path)
    team = admin.create_team(ctx, name="default")
    created = admin.create_management_key(ctx, team_id=team.team_id, name="bootstrap")
    write_private(
        path,
        f"# keyplane bootstrap management key for team {team.name} ({team.team_id})\n"
        f"{created.secret}\n",
    )
    return Bootstrap(team.team_id, team.name, created.secret, path)
