"""Control-plane ingest of gateway usage: dedupe by spool offset, roll up, count spend, cap.

One write transaction per batch: the batch's ingest mark (row-locked), the rollups at minute,
hour and day resolution, the spend counters, any block it causes, and the new mark commit
together. A batch resent after a lost ack, after a crash on either side, or to another control
plane replica is recognized by its offsets: frames below the mark were counted already.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

import msgspec
from sqlalchemy import Connection

from keyplane.domain.errors import InvalidArgument
from keyplane.services.context import Context
from keyplane.usage import limits, store
from keyplane.usage.periods import day_of
from keyplane.usage.record import UsageRecord, decode, iter_frames
from keyplane.usage.schema import ALL_KEYS, ROLLUPS, usage_spend
from keyplane.usage.wire import MAX_BATCH_BYTES


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int
    revisions: tuple[int, ...]


#: (team, bucket, key, model, endpoint, status): one rollup row.
_Group = tuple[str, int, str, str, str, int]


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
    frames = list(iter_frames(data, start))
    if (frames[-1][1] if frames else start) != end:
        raise InvalidArgument("the batch holds a damaged or partial frame", field="body")
    try:
        records = [(frame_start, decode(payload)) for frame_start, _, payload in frames]
    except msgspec.MsgspecError:
        raise InvalidArgument("the batch holds an undecodable record", field="body") from None
    now = ctx.clock.now()
    revisions: list[int] = []
    with ctx.db.write() as conn:
        mark = store.lock_mark(conn, gateway_id, segment)
        fresh = [r for offset, r in records if mark is None or offset >= mark]
        if fresh:
            revisions = _count(conn, fresh, cluster=cluster, now=now, hard=hard_limit_cents)
        if mark is None or end > mark:
            store.set_mark(
                conn,
                gateway_id=gateway_id,
                segment=segment,
                cluster=cluster,
                offset=end,
                existed=mark is not None,
                now=now,
            )
    for revision in revisions:
        ctx.on_commit(revision)
    return IngestResult(len(fresh), len(records) - len(fresh), tuple(revisions))


def _count(
    conn: Connection,
    records: list[UsageRecord],
    *,
    cluster: str,
    now: datetime,
    hard: int | None,
) -> list[int]:
    cluster = cluster[:128]
    minutes: dict[_Group, list[int]] = {}
    spend: dict[tuple[str, int], int] = defaultdict(int)
    for r in records:
        epoch = r.time_ms // 1000
        group = (r.team_id, epoch - epoch % 60, r.api_key_id, r.model, r.endpoint, r.status)
        sums = minutes.get(group)
        if sums is None:
            minutes[group] = [1, r.prompt_tokens, r.completion_tokens, r.cost]
        else:
            sums[0] += 1
            sums[1] += r.prompt_tokens
            sums[2] += r.completion_tokens
            sums[3] += r.cost
        if r.cost and r.team_id:
            day = day_of(epoch)
            spend[(store.team_subject(r.team_id), day)] += r.cost
            spend[(store.key_subject(r.api_key_id), day)] += r.cost
    # Each team's totals over all its keys too, under ``ALL_KEYS``: queries that neither group
    # nor filter by key read those rows, a thousandth of the per-key ones at 1,000 keys.
    for (team, minute, _key, model, endpoint, status), sums in list(minutes.items()):
        group = (team, minute, ALL_KEYS, model, endpoint, status)
        target = minutes.get(group)
        if target is None:
            minutes[group] = list(sums)
        else:
            for i in range(4):
                target[i] += sums[i]
    rolled = minutes
    for width, table in ROLLUPS:
        if width != 60:
            coarser: dict[_Group, list[int]] = {}
            for (team, minute, key, model, endpoint, status), sums in rolled.items():
                group = (team, minute - minute % width, key, model, endpoint, status)
                target = coarser.get(group)
                if target is None:
                    coarser[group] = list(sums)
                else:
                    for i in range(4):
                        target[i] += sums[i]
            rolled = coarser
        # Sorted, so concurrent ingests lock rows in one order (no deadlock on PostgreSQL).
        rows = [
            (team, bucket, key, model, cluster, endpoint, status, *sums)
            for (team, bucket, key, model, endpoint, status), sums in sorted(rolled.items())
        ]
        store.upsert_add(conn, table, rows, store.ROLLUP_KEY, store.ROLLUP_SUMS)
    if not spend:
        return []
    store.upsert_add(
        conn,
        usage_spend,
        [(s, d, c) for (s, d), c in sorted(spend.items())],
        ("subject", "day"),
        ("cost",),
    )
    revisions: list[int] = []
    teams = sorted({s[5:] for s, _ in spend if s.startswith("team:")})
    keys = sorted({s[4:] for s, _ in spend if s.startswith("key:")})
    for team_id in teams:
        revisions += limits.check_team(conn, team_id, hard_cents=hard, now=now)
    for row in store.budgeted_keys(conn, keys):
        revisions += limits.check_key(
            conn,
            api_key_id=row.api_key_id,
            team_id=row.team_id,
            budget_cents=row.budget_cents,
            period=row.budget_period,
            blocked_until=row.budget_blocked_until,
            now=now,
        )
    return revisions
