"""usage rollups: the cost split by unit (completion, image) and per-request minimum and maximum

Revision ID: 0008_usage_units
Revises: 0007_scale_indexes
Create Date: 2026-12-06 23:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_usage_units"
down_revision: str | None = "0007_scale_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("usage_minutes", "usage_hours", "usage_days")
_EXTREMES = ("prompt_tokens", "completion_tokens", "total_tokens", "cost")


def _columns() -> list[sa.Column[int]]:
    # Rows rolled up before: their whole cost counts as the prompt's, and their extremes are
    # unknown (NULL), which the usage RPC leaves out of AGGREGATION_MIN/MAX.
    return [
        sa.Column("completion_cost", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("image_cost", sa.BigInteger(), nullable=False, server_default="0"),
        *(sa.Column(f"{m}_{v}", sa.BigInteger()) for v in _EXTREMES for m in ("min", "max")),
    ]


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            for column in _columns():
                batch.add_column(column)


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            for column in reversed(_columns()):
                batch.drop_column(column.name)
