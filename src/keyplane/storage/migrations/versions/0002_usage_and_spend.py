"""usage and spend: rollups, ingest marks, spend counters, team limits, key budgets

Revision ID: 0002_usage
Revises: 0001
Create Date: 2026-12-04 17:40:00
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_usage"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The management RPCs before billing: a key holding every one of them was made with "every RPC"
#: and gets the billing ACLs too.
_OLD_RPCS = (
    "CreateApiKey",
    "ListApiKeys",
    "UpdateApiKey",
    "RotateApiKey",
    "DeleteApiKey",
    "CheckApiKeyPropagation",
    "ListModels",
    "ListPossibleEndpointAcls",
    "ListAuditEvents",
)
_BILLING = ("team-token:endpoint:BillingRead", "team-token:endpoint:BillingWrite")


def _rollup(name: str) -> None:
    op.create_table(
        name,
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("api_key_id", sa.String(length=36), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("cluster", sa.String(length=128), nullable=False),
        sa.Column("endpoint", sa.String(length=32), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "team_id",
            "bucket",
            "api_key_id",
            "model",
            "cluster",
            "endpoint",
            "status",
            name=op.f(f"pk_{name}"),
        ),
    )
    op.create_index(f"ix_{name}_bucket", name, ["bucket"])


def upgrade() -> None:
    for name in ("usage_minutes", "usage_hours", "usage_days"):
        _rollup(name)
    op.create_table(
        "usage_ingest_marks",
        sa.Column("gateway_id", sa.String(length=128), nullable=False),
        sa.Column("segment", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("cluster", sa.String(length=128), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("update_time", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("gateway_id", "segment", name=op.f("pk_usage_ingest_marks")),
    )
    op.create_index(
        op.f("ix_usage_ingest_marks_update_time"), "usage_ingest_marks", ["update_time"]
    )
    op.create_table(
        "usage_spend",
        sa.Column("subject", sa.String(length=80), nullable=False),
        sa.Column("day", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("subject", "day", name=op.f("pk_usage_spend")),
    )
    op.create_table(
        "team_billing",
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("soft_limit_cents", sa.BigInteger(), nullable=True),
        sa.Column("blocked_until", sa.BigInteger(), nullable=True),
        sa.Column("update_time", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("team_id", name=op.f("pk_team_billing")),
    )
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.add_column(sa.Column("budget_cents", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("budget_period", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("budget_blocked_until", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("team_blocked_until", sa.BigInteger(), nullable=True))

    keys = sa.table(
        "management_keys", sa.column("key_id", sa.String()), sa.column("acls", sa.Text())
    )
    conn = op.get_bind()
    every = {f"team-token:endpoint:{rpc}" for rpc in _OLD_RPCS}
    for key_id, acls in conn.execute(sa.select(keys.c.key_id, keys.c.acls)).all():
        held = json.loads(acls)
        if every <= set(held):
            extra = [a for a in _BILLING if a not in held]
            conn.execute(
                keys.update()
                .where(keys.c.key_id == key_id)
                .values(acls=json.dumps([*held, *extra]))
            )


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch_op:
        for column in ("team_blocked_until", "budget_blocked_until", "budget_period"):
            batch_op.drop_column(column)
        batch_op.drop_column("budget_cents")
    for name in (
        "team_billing",
        "usage_spend",
        "usage_ingest_marks",
        "usage_days",
        "usage_hours",
        "usage_minutes",
    ):
        op.drop_table(name)
