"""usage rollups: hours and days get a covering index of their key and sums

Revision ID: 0012_usage_covering
Revises: 0011_snapshot_secrets
Create Date: 2026-12-07 05:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_usage_covering"
down_revision: str | None = "0011_snapshot_secrets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("usage_hours", "usage_days")
_COLUMNS = [
    "team_id", "bucket", "api_key_id", "model", "cluster", "endpoint", "status",
    "requests", "prompt_tokens", "completion_tokens", "cost", "completion_cost", "image_cost",
]  # fmt: skip


def upgrade() -> None:
    # The usage RPC reads a team's range of hours or days per key: by the primary key's index
    # it looked up every row in the table (measured on SQLite, 30 days by day of 1,000 keys:
    # 123 -> 90 ms of CPU per answer); this index answers a query without MIN/MAX by itself.
    for table in _TABLES:
        # Partial: the team's totals (api_key_id '*') are read by ix_*_team_key, a few rows a
        # bucket; with this index open to them SQLite read every key's rows instead (30 days by
        # hour: 20 -> 191 ms of CPU).
        per_key = sa.text("api_key_id <> '*'")
        op.create_index(
            f"ix_{table}_covering",
            table,
            _COLUMNS,
            sqlite_where=per_key,
            postgresql_where=per_key,
        )


def downgrade() -> None:
    for table in _TABLES:
        op.drop_index(f"ix_{table}_covering", table_name=table)
