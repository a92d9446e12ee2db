"""usage_minutes on PostgreSQL: pages kept 30 % free, so an ingest's updates stay on their page

Revision ID: 0013_usage_minutes_fillfactor
Revises: 0012_usage_covering
Create Date: 2026-12-07 06:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0013_usage_minutes_fillfactor"
down_revision: str | None = "0012_usage_covering"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Live traffic updates the same minute rows batch after batch (every key's row of the
    # current minute). With full pages each update is a new row version on another page, and
    # all three of the table's indexes get an entry for it; with room on the page it is a HOT
    # update, which touches no index (measured, 100,000 records in batches of 5,000: 64-70 ->
    # 42-50 µs of CPU per record, the control plane's and PostgreSQL's). Pages written from now
    # on; SQLite has no such setting.
    if op.get_context().dialect.name == "postgresql":
        op.execute("ALTER TABLE usage_minutes SET (fillfactor = 70)")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("ALTER TABLE usage_minutes RESET (fillfactor)")
