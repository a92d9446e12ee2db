"""Wiring: from ``Settings`` to the running pieces (database, context), built once at start."""

from __future__ import annotations

from keyplane.domain.clock import SystemClock
from keyplane.services.context import Context
from keyplane.settings import Settings
from keyplane.storage.db import Database


def open_context(settings: Settings, *, migrate: bool = True) -> Context:
    db = Database(settings.resolved_database_url)
    if migrate:
        db.migrate()
    return Context(
        db=db,
        server_secret=db.server_secret(),
        clock=SystemClock(),
        api_key_prefix=settings.api_key_prefix,
        management_key_prefix=settings.management_key_prefix,
    )
