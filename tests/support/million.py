"""The ``million`` group: the seed acceptance suite and the propagation and limit end-to-end tests
run once more against a store pre-loaded with a million keys (``pytest -m million``).

The keys are bulk-loaded once per session into a template SQLite file (one team of their own, no
change log: as if compacted after the load, so every fresh gateway takes a snapshot of them all);
each ``Deployment`` then starts from a copy of it. ``KEYPLANE_TEST_PRELOAD`` names a template to
reuse (built if missing); ``KEYPLANE_TEST_PRELOAD_KEYS`` sets the count (1,000,000).
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path

from keyplane.services import admin
from keyplane.services.context import Context
from keyplane.storage.bulk import load_api_keys
from keyplane.storage.db import Database

PRELOAD_ENV = "KEYPLANE_TEST_PRELOAD"
KEYS_ENV = "KEYPLANE_TEST_PRELOAD_KEYS"
#: The modules the group runs (relative to the repository root).
MODULES = (
    "tests/acceptance/test_seed_document.py",
    "tests/e2e/test_propagation.py",
    "tests/e2e/test_gateway_limits.py",
)
#: A million keys load in minutes on a busy machine; past this the group fails, not hangs.
LOAD_SECONDS = 1200.0


def build_template(path: Path, count: int) -> Path:
    """A store holding ``count`` keys of a team of their own, in one file (closing the last
    connection checkpoints the WAL into it). No
    deployment secret is recorded in it: each copy's control plane records its own."""
    if path.exists():
        return path
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    db = Database(f"sqlite:///{partial}")
    try:
        db.migrate()
        ctx = Context(db=db, server_secret=secrets.token_bytes(32))
        team = admin.create_team(ctx, name="a million keys")
        admin.create_management_key(ctx, team_id=team.team_id, name="bulk")
        started = time.monotonic()

        def progress(line: str) -> None:
            # Past pytest's capture: a load of minutes shows it is moving.
            print(f"[million] {line}", file=sys.__stderr__, flush=True)

        load_api_keys(
            db,
            team_id=team.team_id,
            count=count,
            change_log=False,
            audit=False,
            progress=progress,
            time_limit=LOAD_SECONDS,
        )
        progress(f"template of {count:,} keys in {time.monotonic() - started:.0f} s")
    finally:
        db.dispose()
    for leftover in (Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        leftover.unlink(missing_ok=True)
    partial.rename(path)
    return path


def template() -> Path | None:
    """The template to start every deployment from, when the group is running."""
    value = os.environ.get(PRELOAD_ENV)
    return Path(value) if value else None
