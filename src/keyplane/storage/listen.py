"""PostgreSQL LISTEN: committed revisions announced by other control-plane replicas.

Each change commits a ``NOTIFY keyplane_changes, '<revision>'``; every control plane listens on
one dedicated connection and wakes its feed followers at once, so a gateway long-polling replica A
learns of a key created through replica B without polling. Reconnects forever on failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import structlog
from sqlalchemy.engine import URL

from keyplane.storage.changelog import CHANGES_CHANNEL

log = structlog.get_logger("keyplane.storage")


def libpq_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def listen_for_revisions(url: URL, on_revision: Callable[[int], None]) -> None:
    dsn = libpq_dsn(url)
    backoff = 0.1
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                backoff = 0.1
                async for notice in conn.notifies():
                    if notice.payload.isdigit():
                        on_revision(int(notice.payload))
        except asyncio.CancelledError:
            raise
        except (psycopg.Error, OSError) as error:
            log.warning("listen_failed", error=type(error).__name__)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
