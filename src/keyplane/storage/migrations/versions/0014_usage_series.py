"""usage_series: each key's days as one row per 32-day period, for the usage RPC by key and day

Revision ID: 0014_usage_series
Revises: 0013_usage_minutes_fillfactor
Create Date: 2026-12-07 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_usage_series"
down_revision: str | None = "0013_usage_minutes_fillfactor"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As in keyplane.usage.schema at this revision (a migration does not follow later code).
_SLOTS = 32
_PERIOD = _SLOTS * 86400
_SUMS = ("cost", "requests", "prompt_tokens", "completion_tokens")
_CELLS = [f"{name}_{slot}" for name in _SUMS for slot in range(_SLOTS)]


def upgrade() -> None:
    # Every key of a team by day over a month was 31,000 rows of usage_days read, grouped and
    # handed to Python per answer (~45 of the ~70 ms of CPU it took on SQLite); here it is
    # 2,000 rows of 32 cells each.
    op.create_table(
        "usage_series",
        sa.Column("team_id", sa.String(36), primary_key=True),
        sa.Column("period", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("api_key_id", sa.String(36), primary_key=True),
        *(sa.Column(c, sa.BigInteger, nullable=False, server_default="0") for c in _CELLS),
        sqlite_with_rowid=False,
    )
    # usage_days holds exactly the folded minutes, and so does usage_series: filled from it.
    sums = ", ".join(f"sum({name}) AS {name}" for name in _SUMS)
    picks = ", ".join(
        f"sum(CASE WHEN slot = {slot} THEN {name} ELSE 0 END)"
        for name in _SUMS
        for slot in range(_SLOTS)
    )
    op.execute(
        f"INSERT INTO usage_series (team_id, period, api_key_id, {', '.join(_CELLS)}) "  # noqa: S608
        f"SELECT team_id, period, api_key_id, {picks} FROM ("
        f"SELECT team_id, bucket - bucket % {_PERIOD} AS period, "
        f"(bucket % {_PERIOD}) / 86400 AS slot, api_key_id, {sums} FROM usage_days "
        "WHERE api_key_id <> '*' GROUP BY team_id, 2, 3, api_key_id) AS days "
        "GROUP BY team_id, period, api_key_id"
    )


def downgrade() -> None:
    op.drop_table("usage_series")
