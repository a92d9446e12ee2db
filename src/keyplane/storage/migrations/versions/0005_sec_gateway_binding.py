"""feed credentials bound to one gateway; what each gateway was served

A gateway's acks count only for the id its credential is bound to and only up to a revision the
control plane has served it. Gateway rows recorded before (possibly forged) are dropped: live
gateways register again on their next poll.

Revision ID: 0005_sec
Revises: 0004_sec
Create Date: 2026-12-04 18:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_sec"
down_revision: str | None = "0004_sec"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cluster_credentials", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gateway_id", sa.String(length=128), nullable=True))
    op.execute("DELETE FROM gateways")
    with op.batch_alter_table("gateways", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("served_revision", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("gateways", schema=None) as batch_op:
        batch_op.drop_column("served_revision")
    with op.batch_alter_table("cluster_credentials", schema=None) as batch_op:
        batch_op.drop_column("gateway_id")
