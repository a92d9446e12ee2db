"""The storage room: rows in, domain objects out, on SQLite and PostgreSQL alike.

Owns the schema (``tables``, Alembic ``migrations``), engines and transactions (``db``), one module
per aggregate (``teams``, ``management_keys``, ``api_keys``, ``audit``, ``idempotency``,
``operators``; the feed's ``changelog`` and ``gateways``), the ``unit_of_work`` the use cases run
in (it owns the commit, the change-log revision, the audit event and ``on_commit``), and
PostgreSQL ``LISTEN`` for committed revisions (``listen``). No business rules: those are
``keyplane.services``.

May import: ``keyplane.domain``. Never services, control, propagation or gateway.
"""

from keyplane.storage.db import Database

__all__ = [
    "Database",
]
