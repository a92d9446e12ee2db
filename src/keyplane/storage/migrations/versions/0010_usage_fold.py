"""usage rollups: ingest writes minutes only; a fold mark says how far hours and days hold them

Revision ID: 0010_usage_fold
Revises: 0009_acl_list_order
Create Date: 2026-12-07 02:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_usage_fold"
down_revision: str | None = "0009_acl_list_order"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    fold = op.create_table(
        "usage_fold",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("folded_to", sa.BigInteger(), nullable=False),
        sa.Column("update_time", sa.BigInteger(), nullable=False),
    )
    # Until now every record went into all three tables: the hours and days hold every minute
    # ingested so far. The mark starts past the last of them (each table's newest bucket end is
    # a bound; minutes may have been dropped by retention before hours).
    bound = sa.text(
        "SELECT max(coalesce((SELECT max(bucket) + 60 FROM usage_minutes), 0), "
        "coalesce((SELECT max(bucket) + 3600 FROM usage_hours), 0), "
        "coalesce((SELECT max(bucket) + 86400 FROM usage_days), 0))"
    )
    if op.get_context().dialect.name == "postgresql":
        bound = sa.text(str(bound).replace("SELECT max(coalesce", "SELECT greatest(coalesce", 1))
    folded_to = op.get_bind().execute(bound).scalar_one()
    op.bulk_insert(fold, [{"name": "rollups", "folded_to": int(folded_to), "update_time": 0}])


_KEY = "team_id, bucket, api_key_id, model, cluster, endpoint, status"
_SUMS = ("requests", "prompt_tokens", "completion_tokens", "cost", "completion_cost", "image_cost")
_EXTREMES = [
    (f"{m}_{v}", m) for v in ("prompt_tokens", "completion_tokens", "total_tokens", "cost")
    for m in ("min", "max")
]  # fmt: skip


def downgrade() -> None:
    # Hours and days lack the minutes past the mark, and the old code writes every table at
    # ingest and never folds: fold them now.
    pg = op.get_context().dialect.name == "postgresql"
    names = [*_SUMS, *(n for n, _ in _EXTREMES)]
    picks = ", ".join([*(f"sum({c})" for c in _SUMS), *(f"{m}({n})" for n, m in _EXTREMES)])
    for table, width in (("usage_hours", 3600), ("usage_days", 86400)):
        updates = [f"{c} = {table}.{c} + excluded.{c}" for c in _SUMS]
        for n, m in _EXTREMES:
            pick = ("LEAST" if m == "min" else "GREATEST") if pg else m
            updates.append(f"{n} = {pick}({table}.{n}, excluded.{n})")
        op.execute(
            f"INSERT INTO {table} ({_KEY}, {', '.join(names)}) "  # noqa: S608 - our own names
            f"SELECT team_id, bucket / {width} * {width}, api_key_id, model, cluster, endpoint, "
            f"status, {picks} FROM usage_minutes "
            "WHERE bucket >= (SELECT folded_to FROM usage_fold WHERE name = 'rollups') "
            "GROUP BY team_id, 2, api_key_id, model, cluster, endpoint, status "
            f"ON CONFLICT ({_KEY}) DO UPDATE SET {', '.join(updates)}"
        )
    op.drop_table("usage_fold")
