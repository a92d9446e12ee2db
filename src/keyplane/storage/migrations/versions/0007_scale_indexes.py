"""scale (#17): indexes for the housekeeping reads that ran on request paths as full scans

Revision ID: 0007_scale_indexes
Revises: 0006_usage_key_index
Create Date: 2026-12-06 23:30:00

The usage housekeeping (run from request paths at most every few seconds) looked for blocked keys
with ``budget_blocked_until < t OR team_blocked_until < t`` (a scan of every key) and purged
``usage_spend`` by ``day`` (a scan of every team's and key's spend). Partial indexes hold only the
few blocked keys; SQLite and PostgreSQL both use them for the OR (a multi-index OR, a BitmapOr).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_scale_indexes"
down_revision: str | None = "0006_usage_key_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BLOCKED = ("budget_blocked_until", "team_blocked_until")


def upgrade() -> None:
    for column in _BLOCKED:
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(
            f"ix_api_keys_{column}",
            "api_keys",
            [column],
            sqlite_where=where,
            postgresql_where=where,
        )
    op.create_index("ix_usage_spend_day", "usage_spend", ["day"])


def downgrade() -> None:
    op.drop_index("ix_usage_spend_day", table_name="usage_spend")
    for column in _BLOCKED:
        op.drop_index(f"ix_api_keys_{column}", table_name="api_keys")
