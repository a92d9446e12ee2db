"""Control-plane ingest of gateway usage: dedupe by spool offset, roll up, count spend, cap.

One write transaction per batch: the batch's ingest mark (row-locked), the minute rollups, the
spend counters, any block it causes, and the new mark commit together. The batch's fresh records
are grouped by minute in Python (one pass) and staged in one driver call; the database sums and
upserts (``store.roll_up``), one statement per rollup table and kind. Hours and days are folded
from closed minutes in the background (``fold``): live traffic costs one upsert per distinct
minute row; a record older than the fold mark (a gateway's backlog) also goes into hours and days.

A batch resent after a lost ack, after a crash on either side, or to another control plane
replica is recognized by its offsets: frames below the mark were counted already.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

import msgspec

from keyplane.domain.errors import InvalidArgument
from keyplane.services.context import Context
from keyplane.storage.unit_of_work import SqlUnitOfWork
from keyplane.usage import limits, store
from keyplane.usage.record import UsageRecord, decode, iter_frames
from keyplane.usage.wire import MAX_BATCH_BYTES


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int
    revisions: tuple[int, ...]


def ingest(
    ctx: Context,
    *,
    gateway_id: str,
    cluster: str,
    segment: int,
    start: int,
    end: int,
    data: bytes,
    hard_limit_cents: int | None = None,
) -> IngestResult:
    if not 0 <= start <= end or end - start != len(data) or len(data) > MAX_BATCH_BYTES:
        raise InvalidArgument("the batch's offsets do not match its body", field="end")
    offsets: list[int] = []
    records: list[UsageRecord] = []
    stop = start  # where the intact frames end
    try:
        for offset, frame_end, payload in iter_frames(data, start):
            offsets.append(offset)
            records.append(decode(payload))
            stop = frame_end
    except msgspec.MsgspecError:
        raise InvalidArgument("the batch holds an undecodable record", field="body") from None
    if stop != end:
        raise InvalidArgument("the batch holds a damaged or partial frame", field="body")
    revisions: list[int] = []
    with ctx.sql_write() as uow:
        mark = store.lock_mark(uow.conn, gateway_id, segment)
        # Offsets ascend: the fresh records are those from the first frame at or past the mark.
        fresh = records[bisect_left(offsets, mark) :] if mark is not None else records
        if fresh:
            revisions = _count(uow, fresh, cluster=cluster, hard=hard_limit_cents)
        if mark is None or end > mark:
            store.set_mark(
                uow.conn,
                gateway_id=gateway_id,
                segment=segment,
                cluster=cluster,
                offset=end,
                existed=mark is not None,
                now=uow.now,
            )
    return IngestResult(len(fresh), len(records) - len(fresh), tuple(revisions))


def _count(
    uow: SqlUnitOfWork, records: list[UsageRecord], *, cluster: str, hard: int | None
) -> list[int]:
    # Grouped by minute here (``store.stage``), then summed by the database: per minute, hour
    # and day, per key and for the team's totals over its keys (``ALL_KEYS``: what queries that
    # neither group nor filter by key read).
    conn = uow.conn
    oldest = store.stage(conn, records)
    store.roll_up(conn, cluster[:128], store.folded_to(conn), oldest)
    # Only the teams a limit can apply to, and the keys with a budget: no statement per team
    # or key that cannot be over.
    teams, budgeted = store.stage_spend(conn, every_team=hard is not None)
    revisions: list[int] = []
    for team_id in teams:
        revisions += limits.check_team(uow, team_id, hard_cents=hard)
    for row in budgeted:
        revisions += limits.check_key(
            uow,
            api_key_id=row.api_key_id,
            team_id=row.team_id,
            budget_cents=row.budget_cents,
            period=row.budget_period,
            blocked_until=row.budget_blocked_until,
        )
    return revisions


def fold(ctx: Context, *, until: int, steps: int = 24) -> int:
    """Fold closed minutes (before ``until``, a minute edge) into hours and days, an hour of
    minute rows per transaction, at most ``steps`` transactions; the fold mark reached."""
    reached = 0
    for _ in range(steps):
        with ctx.sql_write() as uow:
            reached = store.fold(uow.conn, until=until, now=uow.now)
        if reached >= until:
            break
    return reached
