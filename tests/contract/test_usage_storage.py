"""The usage store on every engine: ingest is idempotent by spool offset, rollups agree at every
resolution, spend is counted for limits."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import msgspec
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import func, insert, select

from keyplane.domain.clock import ManualClock
from keyplane.domain.errors import InvalidArgument
from keyplane.services import admin, audit, keys
from keyplane.services.admin import ALL_RPCS
from keyplane.services.auth import Principal
from keyplane.services.context import Context
from keyplane.storage import tables
from keyplane.storage.db import Database
from keyplane.usage import billing, housekeeping, ingest, store
from keyplane.usage.record import UsageRecord, frame
from keyplane.usage.schema import ALL_KEYS, ROLLUPS, usage_hours, usage_minutes
from tests.support import migrations

BILLING = ["team-token:endpoint:BillingRead", "team-token:endpoint:BillingWrite"]

T0 = 1_780_000_000_000  # ms; a minute boundary is not assumed


def records(n: int, *, team: str = "team-a", start_ms: int = T0) -> list[UsageRecord]:
    return [
        UsageRecord(
            time_ms=start_ms + i * 7_000,
            team_id=team,
            api_key_id=f"key-{i % 3}",
            model="grok-4" if i % 2 else "grok-3",
            endpoint="chat",
            status=200 if i % 5 else 429,
            prompt_tokens=i,
            completion_tokens=2 * i,
            cost=i * 100,
        )
        for i in range(n)
    ]


def send(
    ctx: Context, batch: list[UsageRecord], *, start: int = 0, segment: int = 1
) -> ingest.IngestResult:
    data = b"".join(frame(r) for r in batch)
    return ingest.ingest(
        ctx,
        gateway_id="us-east-1/gw",
        cluster="us-east-1",
        segment=segment,
        start=start,
        end=start + len(data),
        data=data,
    )


def sums(ctx: Context) -> list[tuple[int, int, int, int]]:
    """(requests, prompt, completion, cost) summed over each rollup table, once the minutes are
    folded into hours and days."""
    ingest.fold(ctx, until=T0 // 1000 + 86400 - T0 // 1000 % 60)
    out = []
    with ctx.db.read() as conn:
        for _, table in ROLLUPS:
            row = conn.execute(
                select(
                    func.sum(table.c.requests),
                    func.sum(table.c.prompt_tokens),
                    func.sum(table.c.completion_tokens),
                    func.sum(table.c.cost),
                ).where(table.c.api_key_id == ALL_KEYS)
            ).one()
            per_key = conn.execute(
                select(func.sum(table.c.requests)).where(table.c.api_key_id != ALL_KEYS)
            ).scalar_one()
            assert int(per_key or 0) == int(row[0] or 0), "the team totals equal the keys' sums"
            out.append(tuple(int(v or 0) for v in row))
    return out  # type: ignore[return-value]


def expected(batch: list[UsageRecord]) -> tuple[int, int, int, int]:
    return (
        len(batch),
        sum(r.prompt_tokens for r in batch),
        sum(r.completion_tokens for r in batch),
        sum(r.cost for r in batch),
    )


def test_a_resent_batch_counts_once_and_an_overlapping_one_adds_only_its_new_records(
    ctx: Context,
) -> None:
    batch = records(40)
    first = send(ctx, batch[:25])
    assert (first.accepted, first.duplicates) == (25, 0)
    again = send(ctx, batch[:25])  # the ack was lost: the same range comes again
    assert (again.accepted, again.duplicates) == (0, 25)
    # The gateway restarted and now sends from its cursor with more appended since.
    overlap = send(ctx, batch)
    assert (overlap.accepted, overlap.duplicates) == (15, 25)
    assert sums(ctx) == [expected(batch)] * 3


def test_records_older_than_the_fold_mark_go_into_hours_and_days_at_ingest(ctx: Context) -> None:
    """A backlog shipped after its minutes were folded: the minutes before the mark are not
    folded again, so ingest puts those records into hours and days itself."""
    batch = records(40)  # 40 records 7 s apart: about 5 minutes
    send(ctx, batch[:20])
    mark = ingest.fold(ctx, until=(T0 + 200_000) // 60_000 * 60)
    assert mark == (T0 + 200_000) // 60_000 * 60
    late = send(ctx, batch[20:], start=10**6, segment=2)  # before and after the mark
    assert late.accepted == 20
    assert sums(ctx) == [expected(batch)] * 3


def test_names_with_separators_and_escapes_are_stored_as_they_are(ctx: Context) -> None:
    """PostgreSQL stages a batch with COPY's text format, where a tab, a newline, a carriage
    return or a backslash in a name means something else: each is kept as it was."""
    odd = ["tab\there", "new\nline", "carriage\rreturn", "back\\slash \\N", "", "plain"]
    batch = [
        msgspec.structs.replace(r, model=name, api_key_id=name[:36])
        for r, name in zip(records(len(odd)), odd, strict=True)
    ]
    send(ctx, batch)
    with ctx.db.read() as conn:
        stored = conn.execute(
            select(usage_minutes.c.model, usage_minutes.c.api_key_id).where(
                usage_minutes.c.api_key_id != ALL_KEYS
            )
        ).all()
    assert sorted((m, k) for m, k in stored) == sorted((n, n[:36]) for n in odd)


def test_segments_and_gateways_are_deduplicated_apart(ctx: Context) -> None:
    batch = records(10)
    send(ctx, batch, segment=1)
    send(ctx, batch, segment=2)  # a new segment starts at offset 0 again
    assert sums(ctx)[0] == expected(batch + batch)


def test_a_damaged_batch_is_refused_whole(ctx: Context) -> None:
    data = b"".join(frame(r) for r in records(5))
    broken = data[:-3] + b"xyz"
    with pytest.raises(InvalidArgument):
        ingest.ingest(
            ctx, gateway_id="g", cluster="c", segment=1, start=0, end=len(broken), data=broken
        )
    assert sums(ctx)[0] == (0, 0, 0, 0)


def test_the_fold_mark_starts_past_the_rollups_made_before_it_and_a_downgrade_folds_the_rest(
    bare_db: Database,
) -> None:
    """Before migration 0010 ingest wrote every table: the mark starts past the newest row of
    any of them (minutes may be gone by retention before hours). Going back to 0008 folds the
    minutes past the mark, since the old code reads hours and days whole."""
    db, cfg = bare_db, migrations.config()
    hour = 1_780_000_000 - 1_780_000_000 % 3600
    row = {"team_id": "t", "api_key_id": ALL_KEYS, "model": "m", "cluster": "c",
           "endpoint": "chat", "status": 200, "requests": 1, "prompt_tokens": 1,
           "completion_tokens": 1, "cost": 1}  # fmt: skip
    with db.writer.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0008_usage_units")
        conn.execute(insert(usage_minutes).values({**row, "bucket": hour - 86400}))
        conn.execute(insert(usage_hours).values({**row, "bucket": hour}))
        command.upgrade(cfg, "head")
        assert store.folded_to(conn) == hour + 3600
    ctx = Context(db=db, server_secret=b"s" * 32)
    batch = records(5, start_ms=(hour + 7200) * 1000)  # minutes past the mark: not folded
    send(ctx, batch)
    with db.writer.begin() as conn:
        cfg.attributes["connection"] = conn
        before = ScriptDirectory.from_config(cfg).get_revision("0010_usage_fold")
        assert before is not None
        assert isinstance(before.down_revision, str)
        command.downgrade(cfg, before.down_revision)
        got = conn.execute(
            select(func.sum(usage_hours.c.requests)).where(usage_hours.c.api_key_id == ALL_KEYS)
        ).scalar_one()
        assert int(got) == 1 + len(batch)


def test_keys_made_with_every_rpc_before_billing_get_the_billing_acls(bare_db: Database) -> None:
    db, cfg = bare_db, migrations.config()
    with db.writer.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")  # the schema as it was before usage
        conn.execute(
            insert(tables.teams).values(team_id="t", name="t", create_time=0, blocked=False)
        )
        old = [a for a in ALL_RPCS if "Billing" not in a]
        for key_id, acls in (("every", old), ("some", old[:2])):
            conn.execute(
                insert(tables.management_keys).values(
                    key_id=key_id,
                    team_id="t",
                    name=key_id,
                    owner_user_id="u",
                    digest=key_id,
                    redacted=key_id,
                    acls=json.dumps(acls),
                    create_time=0,
                    modify_time=0,
                )
            )
    db.migrate()
    with db.read() as conn:
        rows = dict(
            conn.execute(
                select(tables.management_keys.c.key_id, tables.management_keys.c.acls)
            ).all()
        )
    assert json.loads(rows["every"]) == [*old, *BILLING]
    assert json.loads(rows["some"]) == old[:2]


def test_blocks_follow_the_spend_and_lift_when_the_period_turns(ctx: Context) -> None:
    clock = ManualClock(datetime(2026, 5, 31, 23, 0, tzinfo=UTC))
    ctx = replace(ctx, clock=clock)
    team = admin.create_team(ctx, name="spender")
    principal = Principal(admin.create_management_key(ctx, team_id=team.team_id, name="m").key)
    made, _ = keys.create_key(
        ctx,
        principal=principal,
        team_id=team.team_id,
        spec=keys.parse_new_key({"name": "k", "budget": {"cents": "3", "period": "DAY"}}),
    )
    assert made is not None
    key_id = made.key.api_key_id
    billing.set_limit(ctx, principal=principal, team_id=team.team_id, cents=5, hard_cents=None)

    segments = iter(range(1, 1000))

    def spend(cents: int) -> None:
        at = int(clock.now().timestamp() * 1000)
        record = UsageRecord(at, team.team_id, key_id, "grok-4", "chat", 200, 1, 1, cents * 10**8)
        send(ctx, [record], segment=next(segments))  # each its own segment: none is a resend

    def state() -> tuple[bool, bool]:
        key = keys.get_key(ctx, principal=principal, api_key_id=key_id)
        now = clock.now()
        return (
            key.budget_blocked_until is not None and key.budget_blocked_until > now,
            key.team_blocked_until is not None and key.team_blocked_until > now,
        )

    spend(2)
    assert state() == (False, False)
    spend(1)  # the key's daily budget of 3 cents is reached
    assert state() == (True, False)
    spend(2)  # and the team's 5 cents this month
    assert state() == (True, True)
    clock.advance(3600)  # June begins: a new day and a new month
    housekeeping.lift_expired(ctx)
    assert state() == (False, False)
    # Lowering the budget below this day's spend blocks at once; raising it unblocks.
    spend(2)
    keys.update_key(
        ctx,
        principal=principal,
        api_key_id=key_id,
        patch={"budget": {"cents": "1", "period": "DAY"}},
        field_mask="budget",
    )
    assert state() == (True, False)
    keys.update_key(
        ctx, principal=principal, api_key_id=key_id, patch={"budget": None}, field_mask="budget"
    )
    assert state() == (False, False)
    events = audit.list_events(
        ctx,
        principal=principal,
        team_id=team.team_id,
        page_size=100,
        page_token=None,
        time_from=None,
        time_to=None,
        text=None,
        user_id=None,
        descending=False,
    ).events
    operations = [e.operation for e in events]
    assert operations.count("BlockApiKey") == 1
    assert operations.count("BlockTeam") == 1
    assert "UnblockTeam" in operations


# SQLite only: PostgreSQL plans by its statistics of the data, not by the schema alone.
@pytest.mark.parametrize("bare_db", ["sqlite"], indirect=True)
def test_queries_by_key_read_the_covering_index_and_the_team_totals_their_few_rows(
    ctx: Context,
) -> None:
    """SQLite's planner, left to itself, read every key's rows for the team's totals once hours
    and days had a covering index (30 days by hour: 20 -> 191 ms of CPU): the index is partial,
    so only queries by key can use it."""
    from keyplane.catalog import Catalog
    from keyplane.settings import Settings
    from keyplane.usage import query

    def plan(unit: str, **extra: object) -> str:
        request = {
            "analyticsRequest": {
                "timeRange": {
                    "startTime": "2026-11-01 00:00:00",
                    "endTime": "2026-12-01 00:00:00",
                    "timezone": "Etc/GMT",
                },
                "timeUnit": unit,
                **extra,
            }
        }
        with ctx.db.read() as conn:
            return " / ".join(query.plan(conn, "t", query.parse(request), Catalog(Settings())))

    per_key = ["api_key_id"]
    # Every key by day (a sum grouped by key alone) reads each key's series, a row per period.
    series = "usage_series USING PRIMARY KEY (team_id=? AND period>? AND period<?)"
    assert series in plan("TIME_UNIT_DAY", groupBy=per_key)
    by_model = ["model:grok-4"]
    for unit, table in (("TIME_UNIT_DAY", "usage_days"), ("TIME_UNIT_HOUR", "usage_hours")):
        by_key = plan(unit, groupBy=per_key, filters=by_model)
        assert f"{table} USING COVERING INDEX ix_{table}_covering" in by_key
        assert f"{table} USING INDEX ix_{table}_team_key" in plan(unit)
        one_key = plan(unit, filters=["api_key_id:k1"])
        assert f"{table} USING INDEX ix_{table}_team_key (team_id=? AND api_key_id=?" in one_key
    for filters in ([], by_model):
        totals = plan("TIME_UNIT_NONE", groupBy=per_key, filters=filters)
        assert "usage_days USING COVERING INDEX ix_usage_days_covering" in totals
