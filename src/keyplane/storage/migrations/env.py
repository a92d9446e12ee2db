"""Alembic environment: runs on the connection ``keyplane.storage.db`` hands it, never a URL."""

from __future__ import annotations

from alembic import context

from keyplane.storage.tables import metadata
from keyplane.usage import schema as _usage_tables  # noqa: F401  (puts them on metadata)

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only for `alembic revision --autogenerate` by hand
    from sqlalchemy import create_engine

    url = context.config.get_main_option("sqlalchemy.url") or "sqlite://"
    with create_engine(url).connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
