"""The storage room: rows in, domain objects out, on SQLite and PostgreSQL alike.

Owns the schema (``tables``, Alembic ``migrations``), engines and transactions (``db``), the reads
and writes of each aggregate, and PostgreSQL ``LISTEN`` for committed revisions (``listen``). No
business rules: those are ``keyplane.services``.

May import: ``keyplane.domain``. Never services, control, propagation or gateway.
"""

from keyplane.storage.db import Database

__all__ = [
    "Database",
]
