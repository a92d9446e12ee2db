"""The schema, as SQLAlchemy Core tables. Alembic migrations create it; code reads these objects.

Times are integer microseconds since the epoch (UTC): exact, sortable and the same on every
dialect. JSON travels as text for the same reason.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = String(36)

teams = Table(
    "teams",
    metadata,
    Column("team_id", ID, primary_key=True),
    Column("name", String(256), nullable=False, unique=True),
    Column("create_time", BigInteger, nullable=False),
    Column("blocked", Boolean, nullable=False, default=False),
)

management_keys = Table(
    "management_keys",
    metadata,
    Column("key_id", ID, primary_key=True),
    Column("team_id", ID, ForeignKey("teams.team_id"), nullable=False, index=True),
    Column("name", String(256), nullable=False),
    Column("owner_user_id", ID, nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("redacted", String(64), nullable=False),
    Column("acls", Text, nullable=False),
    Column("create_time", BigInteger, nullable=False),
    Column("modify_time", BigInteger, nullable=False),
    Column("revoke_time", BigInteger),
)

#: Operators' console credentials (``keyplane admin operators create``): digests only.
operators = Table(
    "operators",
    metadata,
    Column("operator_id", ID, primary_key=True),
    Column("name", String(256), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("redacted", String(64), nullable=False),
    Column("create_time", BigInteger, nullable=False),
    Column("revoke_time", BigInteger),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("api_key_id", ID, primary_key=True),
    Column("team_id", ID, ForeignKey("teams.team_id"), nullable=False),
    Column("user_id", ID, nullable=False),
    Column("name", String(256), nullable=False),
    Column("redacted", String(64), nullable=False),
    Column("create_time", BigInteger, nullable=False),
    Column("modify_time", BigInteger, nullable=False),
    Column("modified_by", ID, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("expire_time", BigInteger),
    Column("qps", Integer),
    Column("qpm", Integer),
    Column("tpm", BigInteger),
    Column("acls", Text, nullable=False),
    Column("revision", BigInteger, nullable=False),
    # keyplane.usage: a per-key budget, and until when spend keeps the key (or its team) blocked.
    Column("budget_cents", BigInteger),
    Column("budget_period", String(8)),
    Column("budget_blocked_until", BigInteger),
    Column("team_blocked_until", BigInteger),
    Index("ix_api_keys_team_order", "team_id", "create_time", "api_key_id"),
    # The usage housekeeping's look for blocks that ran out: only blocked keys are indexed.
    *(
        Index(
            f"ix_api_keys_{column}",
            column,
            sqlite_where=text(f"{column} IS NOT NULL"),
            postgresql_where=text(f"{column} IS NOT NULL"),
        )
        for column in ("budget_blocked_until", "team_blocked_until")
    ),
)

api_key_secrets = Table(
    "api_key_secrets",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column(
        "api_key_id",
        ID,
        ForeignKey("api_keys.api_key_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("create_time", BigInteger, nullable=False),
    Column("expire_time", BigInteger),
    # The snapshot reads each key's secrets newest first from this index alone (0011).
    Index("ix_api_key_secrets_snapshot", "api_key_id", "create_time", "digest", "expire_time"),
)

# One row per (key, ACL string): lets ListApiKeys filter by ACL in SQL, page by page. The key's
# team and create time are copied here (neither changes) so that one index holds a team's keys
# with an ACL in list order: a page of a filter reads its page, however many keys hold the ACL.
api_key_acls = Table(
    "api_key_acls",
    metadata,
    Column(
        "api_key_id",
        ID,
        ForeignKey("api_keys.api_key_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("acl", String(300), primary_key=True),
    Column("team_id", ID, nullable=False),
    Column("create_time", BigInteger, nullable=False),
    Index("ix_api_key_acls_list", "acl", "team_id", "create_time", "api_key_id"),
)

deleted_api_keys = Table(
    "deleted_api_keys",
    metadata,
    Column("api_key_id", ID, primary_key=True),
    Column("team_id", ID, nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("delete_time", BigInteger, nullable=False, index=True),
)

# The single row whose UPDATE hands out revisions: the row lock it takes is held to commit, so
# revisions are gap-free and commit in order on every engine (a sequence is neither).
revision_counter = Table(
    "revision_counter",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("value", BigInteger, nullable=False),
)

change_log = Table(
    "change_log",
    metadata,
    Column("revision", BigInteger, primary_key=True, autoincrement=False),
    Column("api_key_id", ID, nullable=False),
    Column("team_id", ID, nullable=False),
    Column("op", String(16), nullable=False),
    Column("view", Text, nullable=False),
    Column("commit_time", BigInteger, nullable=False),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("event_id", ID, primary_key=True),
    Column("team_id", ID, nullable=False),
    Column("event_time", BigInteger, nullable=False),
    Column("user_id", ID, nullable=False),
    Column("operation", String(64), nullable=False),
    Column("entity_type", String(64), nullable=False),
    Column("entity_id", String(64), nullable=False),
    Column("description", Text, nullable=False),
    Index("ix_audit_events_team_time", "team_id", "event_time", "event_id"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    # HMAC of (team, management key, Idempotency-Key) under the deployment secret, which is kept
    # outside the database: the database alone can neither find nor open a record.
    Column("locator", String(64), primary_key=True),
    Column("api_key_id", ID, nullable=False, index=True),
    Column("request_digest", String(64), nullable=False),
    # The first answer, secret included, sealed with a key derived the same way; NULL once the
    # key it created is rotated or deleted.
    Column("sealed_response", LargeBinary, nullable=True),
    Column("create_time", BigInteger, nullable=False, index=True),
)

meta = Table(
    "meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

cluster_credentials = Table(
    "cluster_credentials",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("cluster", String(128), nullable=False),
    Column("create_time", BigInteger, nullable=False),
    Column("revoke_time", BigInteger),
    # The one gateway this credential speaks for, bound on its first poll (registration).
    Column("gateway_id", String(128)),
)

gateways = Table(
    "gateways",
    metadata,
    Column("gateway_id", String(128), primary_key=True),
    Column("cluster", String(128), nullable=False, index=True),
    Column("applied_revision", BigInteger, nullable=False),
    Column("first_seen", BigInteger, nullable=False),
    Column("last_seen", BigInteger, nullable=False),
    # The newest revision the control plane has sent it: an ack above it applies nothing.
    Column("served_revision", BigInteger, nullable=False, server_default="0"),
)
