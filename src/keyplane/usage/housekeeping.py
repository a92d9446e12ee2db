"""The usage room's background work on the control plane: fold closed minutes into hours and
days, lift blocks whose period ended, and drop rollups, spend counters and ingest marks past their
retention."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog

from keyplane.domain.timefmt import to_micros
from keyplane.services.context import Context
from keyplane.settings import UsageSettings
from keyplane.usage import ingest, limits, store

log = structlog.get_logger("keyplane.usage")

LIFT_EVERY = 5.0
PURGE_EVERY = 3600.0
#: A minute is folded this long after it ends: gateways ship every 0.2 s, so its records are in
#: by then; a later one (a backlog) goes into the hours and days at ingest.
FOLD_LAG = 120
#: Spend counters are read a month (31 days) back at most.
SPEND_RETENTION = timedelta(days=62)


def fold(ctx: Context) -> int:
    epoch = int(ctx.clock.now().timestamp()) - FOLD_LAG
    return ingest.fold(ctx, until=epoch - epoch % 60)


def lift_expired(ctx: Context) -> list[int]:
    with ctx.sql_write() as uow:
        return limits.lift_expired(uow)


def purge(ctx: Context, config: UsageSettings) -> int:
    now = ctx.clock.now()
    epoch = int(now.timestamp())
    cutoffs = {
        60: epoch - config.minute_retention_days * 86400,
        3600: epoch - config.hour_retention_days * 86400,
        86400: epoch - config.day_retention_days * 86400,
    }
    with ctx.db.write() as conn:
        return store.purge(
            conn,
            cutoffs=cutoffs,
            spend_before=epoch - int(SPEND_RETENTION.total_seconds()),
            marks_before=to_micros(now - timedelta(days=config.ingest_mark_retention_days)),
        )


async def run(ctx: Context, config: UsageSettings) -> None:
    since_purge = PURGE_EVERY  # purge once at start
    while True:
        try:
            await asyncio.to_thread(fold, ctx)
            await asyncio.to_thread(lift_expired, ctx)
            if since_purge >= PURGE_EVERY:
                since_purge = 0.0
                await asyncio.to_thread(purge, ctx, config)
        except Exception as error:  # keep the loop alive through a transient store error
            log.warning("usage_housekeeping_failed", error=type(error).__name__)
        await asyncio.sleep(LIFT_EVERY)
        since_purge += LIFT_EVERY
