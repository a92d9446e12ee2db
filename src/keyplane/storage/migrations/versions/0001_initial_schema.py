"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 15:22:31.733557
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("event_time", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("operation", sa.String(length=64), nullable=False),
        sa.Column("entity_type", sa.String(length=64), nullable=False),
        sa.Column("entity_id", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_events_team_time", ["team_id", "event_time", "event_id"], unique=False
        )

    op.create_table(
        "change_log",
        sa.Column("revision", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("api_key_id", sa.String(length=36), nullable=False),
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("op", sa.String(length=16), nullable=False),
        sa.Column("view", sa.Text(), nullable=False),
        sa.Column("commit_time", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("revision", name=op.f("pk_change_log")),
    )
    op.create_table(
        "cluster_credentials",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("cluster", sa.String(length=128), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("revoke_time", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_cluster_credentials")),
    )
    op.create_table(
        "deleted_api_keys",
        sa.Column("api_key_id", sa.String(length=36), nullable=False),
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("delete_time", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("api_key_id", name=op.f("pk_deleted_api_keys")),
    )
    with op.batch_alter_table("deleted_api_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_deleted_api_keys_delete_time"), ["delete_time"], unique=False
        )

    op.create_table(
        "gateways",
        sa.Column("gateway_id", sa.String(length=128), nullable=False),
        sa.Column("cluster", sa.String(length=128), nullable=False),
        sa.Column("applied_revision", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", sa.BigInteger(), nullable=False),
        sa.Column("last_seen", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("gateway_id", name=op.f("pk_gateways")),
    )
    with op.batch_alter_table("gateways", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_gateways_cluster"), ["cluster"], unique=False)

    op.create_table(
        "idempotency_keys",
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("key_digest", sa.String(length=64), nullable=False),
        sa.Column("request_digest", sa.String(length=64), nullable=False),
        sa.Column("sealed_response", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "key_digest", name=op.f("pk_idempotency_keys")),
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_idempotency_keys_create_time"), ["create_time"], unique=False
        )

    op.create_table(
        "meta",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_meta")),
    )
    op.create_table(
        "revision_counter",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revision_counter")),
    )
    op.execute("INSERT INTO revision_counter (id, value) VALUES (1, 0)")
    op.create_table(
        "teams",
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("blocked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("team_id", name=op.f("pk_teams")),
        sa.UniqueConstraint("name", name=op.f("uq_teams_name")),
    )
    op.create_table(
        "api_keys",
        sa.Column("api_key_id", sa.String(length=36), nullable=False),
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("redacted", sa.String(length=64), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("modify_time", sa.BigInteger(), nullable=False),
        sa.Column("modified_by", sa.String(length=36), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("expire_time", sa.BigInteger(), nullable=True),
        sa.Column("qps", sa.Integer(), nullable=True),
        sa.Column("qpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.BigInteger(), nullable=True),
        sa.Column("acls", sa.Text(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.team_id"], name=op.f("fk_api_keys_team_id_teams")
        ),
        sa.PrimaryKeyConstraint("api_key_id", name=op.f("pk_api_keys")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(
            "ix_api_keys_team_order", ["team_id", "create_time", "api_key_id"], unique=False
        )

    op.create_table(
        "management_keys",
        sa.Column("key_id", sa.String(length=36), nullable=False),
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("owner_user_id", sa.String(length=36), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("redacted", sa.String(length=64), nullable=False),
        sa.Column("acls", sa.Text(), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("modify_time", sa.BigInteger(), nullable=False),
        sa.Column("revoke_time", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.team_id"], name=op.f("fk_management_keys_team_id_teams")
        ),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_management_keys")),
        sa.UniqueConstraint("digest", name=op.f("uq_management_keys_digest")),
    )
    with op.batch_alter_table("management_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_management_keys_team_id"), ["team_id"], unique=False)

    op.create_table(
        "api_key_acls",
        sa.Column("api_key_id", sa.String(length=36), nullable=False),
        sa.Column("acl", sa.String(length=300), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.api_key_id"],
            name=op.f("fk_api_key_acls_api_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("api_key_id", "acl", name=op.f("pk_api_key_acls")),
    )
    with op.batch_alter_table("api_key_acls", schema=None) as batch_op:
        batch_op.create_index("ix_api_key_acls_acl", ["acl", "api_key_id"], unique=False)

    op.create_table(
        "api_key_secrets",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("api_key_id", sa.String(length=36), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("expire_time", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.api_key_id"],
            name=op.f("fk_api_key_secrets_api_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_api_key_secrets")),
    )
    with op.batch_alter_table("api_key_secrets", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_api_key_secrets_api_key_id"), ["api_key_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("api_key_secrets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_key_secrets_api_key_id"))

    op.drop_table("api_key_secrets")
    with op.batch_alter_table("api_key_acls", schema=None) as batch_op:
        batch_op.drop_index("ix_api_key_acls_acl")

    op.drop_table("api_key_acls")
    with op.batch_alter_table("management_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_management_keys_team_id"))

    op.drop_table("management_keys")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_api_keys_team_order")

    op.drop_table("api_keys")
    op.drop_table("teams")
    op.drop_table("revision_counter")
    op.drop_table("meta")
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_idempotency_keys_create_time"))

    op.drop_table("idempotency_keys")
    with op.batch_alter_table("gateways", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gateways_cluster"))

    op.drop_table("gateways")
    with op.batch_alter_table("deleted_api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deleted_api_keys_delete_time"))

    op.drop_table("deleted_api_keys")
    op.drop_table("cluster_credentials")
    op.drop_table("change_log")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_team_time")

    op.drop_table("audit_events")
