"""usage rollups: an index by (team, key, bucket) for team totals and one key's usage

Revision ID: 0006_usage_key_index
Revises: 0005_sec
Create Date: 2026-12-04 18:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006_usage_key_index"
down_revision: str | None = "0005_sec"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("usage_minutes", "usage_hours", "usage_days")


def upgrade() -> None:
    # The primary key leads with (team, bucket): a query for the team's totals (api_key_id '*')
    # or for one key would otherwise read every key's rows in the range.
    for table in _TABLES:
        op.create_index(f"ix_{table}_team_key", table, ["team_id", "api_key_id", "bucket"])


def downgrade() -> None:
    for table in _TABLES:
        op.drop_index(f"ix_{table}_team_key", table_name=table)
