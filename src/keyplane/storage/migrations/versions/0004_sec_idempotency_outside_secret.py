"""idempotency records located and sealed under a secret kept outside the database

Records sealed under the old in-database secret are dropped (they live 24 h at most, and a copy
of the database could open them); so is that secret.

Revision ID: 0004_sec
Revises: 0003_console_operators
Create Date: 2026-12-04 17:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_sec"
down_revision: str | None = "0003_console_operators"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_table("idempotency_keys")
    op.create_table(
        "idempotency_keys",
        sa.Column("locator", sa.String(length=64), nullable=False),
        sa.Column("api_key_id", sa.String(length=36), nullable=False),
        sa.Column("request_digest", sa.String(length=64), nullable=False),
        sa.Column("sealed_response", sa.LargeBinary(), nullable=True),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("locator", name=op.f("pk_idempotency_keys")),
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_idempotency_keys_create_time"), ["create_time"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_idempotency_keys_api_key_id"), ["api_key_id"], unique=False
        )
    op.execute("DELETE FROM meta WHERE name = 'server_secret'")


def downgrade() -> None:
    raise NotImplementedError("the in-database secret is gone for good")
