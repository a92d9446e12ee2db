"""scale (#17): a team's keys with an ACL, in list order, from one index

Revision ID: 0009_acl_list_order
Revises: 0008_usage_units
Create Date: 2026-12-07 02:45:00

ListApiKeys with a rare ``aclFilters`` read every key holding the ACL (``ix_api_key_acls_acl``:
acl, api_key_id), fetched each key's row and sorted them all for one page: one key in a thousand
is 10 rows at 10,000 keys and 1,000 at a million (CPU ×2.2 on SQLite). ``api_key_acls`` now holds
the key's team and create time (neither ever changes), and ``ix_api_key_acls_list`` (acl,
team_id, create_time, api_key_id) replaces the old index: a page is a range of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_acl_list_order"
down_revision: str | None = "0008_usage_units"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_key_acls", sa.Column("team_id", sa.String(length=36), nullable=True))
    op.add_column("api_key_acls", sa.Column("create_time", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE api_key_acls SET team_id = k.team_id, create_time = k.create_time"
        " FROM api_keys AS k WHERE k.api_key_id = api_key_acls.api_key_id"
    )
    with op.batch_alter_table("api_key_acls") as batch_op:
        batch_op.alter_column("team_id", existing_type=sa.String(length=36), nullable=False)
        batch_op.alter_column("create_time", existing_type=sa.BigInteger(), nullable=False)
        batch_op.drop_index("ix_api_key_acls_acl")
        batch_op.create_index(
            "ix_api_key_acls_list", ["acl", "team_id", "create_time", "api_key_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("api_key_acls") as batch_op:
        batch_op.drop_index("ix_api_key_acls_list")
        batch_op.create_index("ix_api_key_acls_acl", ["acl", "api_key_id"])
        batch_op.drop_column("create_time")
        batch_op.drop_column("team_id")
