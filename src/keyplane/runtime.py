"""Wiring: from ``Settings`` to the running pieces (database, context), built once at start."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from keyplane import deployment_secret
from keyplane.domain.clock import SystemClock
from keyplane.services.context import Context
from keyplane.settings import Settings
from keyplane.storage.db import Database


def open_context(
    settings: Settings, *, migrate: bool = True, on_commit: Callable[[int], None] | None = None
) -> Context:
    db = Database(settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous)
    secret = deployment_secret.load(settings)
    if migrate:
        db.migrate()
        fingerprints = [deployment_secret.fingerprint(s) for s in secret.all]
        if not db.check_secret(fingerprints[0], fingerprints):
            db.dispose()
            raise SystemExit(
                "this database was set up under another deployment secret: give every control "
                "plane the same KEYPLANE_SERVER_SECRET or secret file (docs/deployment.md)"
            )
    return Context(
        db=db,
        server_secret=secret.current,
        previous_secrets=secret.previous,
        clock=SystemClock(),
        api_key_prefix=settings.api_key_prefix,
        management_key_prefix=settings.management_key_prefix,
        gateway_liveness=timedelta(seconds=settings.gateway_liveness_seconds),
        on_commit=on_commit or (lambda _revision: None),
    )
