"""The usage tables: rollups at three resolutions, ingest marks, spend counters, team limits.

On the shared ``MetaData`` so Alembic sees them; the migration ``0002_usage_and_spend`` creates
them (``0008_usage_units_extremes`` adds the cost split and the per-request extremes,
``0010_usage_fold`` the fold mark). Buckets
are epoch seconds of the bucket's start (UTC); money is in 1e-8 USD cents
(``usage.record.COST_SCALE``).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, text

from keyplane.storage.tables import ID, metadata

#: The per-request values whose minimum and maximum each rollup row keeps.
EXTREMES = ("prompt_tokens", "completion_tokens", "total_tokens", "cost")


#: The ``api_key_id`` of the rows that total a team's usage over all its keys.
ALL_KEYS = "*"

#: A rollup row's key (its primary key) and the sums it holds.
ROLLUP_KEY = ("team_id", "bucket", "api_key_id", "model", "cluster", "endpoint", "status")
ROLLUP_SUMS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "completion_cost",
    "image_cost",
)


def _rollup(name: str, *, covering: bool) -> Table:
    # Hours and days (what the usage RPC reads for ranges of days) also have an index of the
    # per-key rows' key and sums, so a query by key without MIN/MAX is answered from the index
    # alone (migration 0012). Partial: a query for the team's totals (``ALL_KEYS``) cannot use
    # it, and reads its few rows by ``ix_*_team_key``, as a planner would not otherwise choose.
    per_key = text(f"api_key_id <> '{ALL_KEYS}'")
    extra = (
        [
            Index(
                f"ix_{name}_covering",
                *ROLLUP_KEY,
                *ROLLUP_SUMS,
                sqlite_where=per_key,
                postgresql_where=per_key,
            )
        ]
        if covering
        else []
    )
    return Table(
        name,
        metadata,
        Column("team_id", ID, primary_key=True),
        Column("bucket", BigInteger, primary_key=True, autoincrement=False),
        Column("api_key_id", ID, primary_key=True),
        Column("model", String(128), primary_key=True),
        Column("cluster", String(128), primary_key=True),
        Column("endpoint", String(32), primary_key=True),
        Column("status", Integer, primary_key=True, autoincrement=False),
        Column("requests", BigInteger, nullable=False),
        Column("prompt_tokens", BigInteger, nullable=False),
        Column("completion_tokens", BigInteger, nullable=False),
        Column("cost", BigInteger, nullable=False),
        # The part of ``cost`` charged for completion tokens and for images (the rest is the
        # prompt's): the usage RPC's ``unit_type``.
        Column("completion_cost", BigInteger, nullable=False, server_default="0"),
        Column("image_cost", BigInteger, nullable=False, server_default="0"),
        # The smallest and largest single request: AGGREGATION_MIN/MAX. NULL in rows rolled up
        # before migration 0008 (unknown).
        *(Column(f"{m}_{v}", BigInteger) for v in EXTREMES for m in ("min", "max")),
        Index(f"ix_{name}_bucket", "bucket"),
        # The team's totals (api_key_id = ALL_KEYS) and one key's rows, without the others.
        Index(f"ix_{name}_team_key", "team_id", "api_key_id", "bucket"),
        *extra,
    )


#: Per-minute, per-hour and per-UTC-day rollups of the same records; each also holds, under
#: ``api_key_id = ALL_KEYS``, the team's totals over its keys.
#: On PostgreSQL ``usage_minutes`` keeps 30 % of each page free (migration 0013): ingest updates
#: the current minute's rows again and again, and with room on the page an update touches no index.
usage_minutes = _rollup("usage_minutes", covering=False)
usage_hours = _rollup("usage_hours", covering=True)
usage_days = _rollup("usage_days", covering=True)
ROLLUPS: tuple[tuple[int, Table], ...] = (
    (60, usage_minutes),
    (3600, usage_hours),
    (86400, usage_days),
)

#: Ingest writes minute rows only (a record older than the fold mark also goes into the hours and
#: days); the control plane's housekeeping folds closed minutes into hours and days and moves
#: the mark. So: hours and days hold exactly the minutes before ``folded_to`` (epoch s, a minute
#: edge), and a query at hour or day resolution reads them below the mark and the minutes from
#: it on. One row, ``name = FOLD``; the migration writes it.
usage_fold = Table(
    "usage_fold",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("folded_to", BigInteger, nullable=False),
    Column("update_time", BigInteger, nullable=False),
)
FOLD = "rollups"

#: How far each gateway spool segment has been ingested: a resend below the mark is a duplicate.
usage_ingest_marks = Table(
    "usage_ingest_marks",
    metadata,
    Column("gateway_id", String(128), primary_key=True),
    Column("segment", BigInteger, primary_key=True, autoincrement=False),
    Column("cluster", String(128), nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("update_time", BigInteger, nullable=False, index=True),
)

#: Spend per UTC day of a team (``team:<id>``) or a key (``key:<id>``): what limits are checked
#: against, a month being at most 31 rows.
usage_spend = Table(
    "usage_spend",
    metadata,
    Column("subject", String(80), primary_key=True),
    Column("day", BigInteger, primary_key=True, autoincrement=False),
    Column("cost", BigInteger, nullable=False),
    Index("ix_usage_spend_day", "day"),
)

#: A team's spending limit (cents) and, while its spend is over it, until when it is blocked.
team_billing = Table(
    "team_billing",
    metadata,
    Column("team_id", ID, primary_key=True),
    Column("soft_limit_cents", BigInteger),
    Column("blocked_until", BigInteger),
    Column("update_time", BigInteger, nullable=False),
)

#: One row per key and 32-day period (``period``: epoch s, a multiple of ``SERIES_PERIOD``) with a
#: cell per day of the period (``{sum}_{slot}``, slot 0-31) for each of ``SERIES_SUMS``: the same
#: per-key rows as ``usage_days`` summed over model, cluster, endpoint and status, laid out as a
#: series. The usage RPC's largest common answer, every key of a team by day, reads a row per key
#: and period here (two for a month) instead of a row per key and day. Kept with the days: by the
#: fold and by ingest of records older than the fold mark, so it holds exactly the minutes before
#: ``folded_to`` (migration 0014 fills it from ``usage_days``). Per-key rows only.
SERIES_SLOTS = 32
SERIES_PERIOD = SERIES_SLOTS * 86400
#: Cost first: what an answer asks most (``usd``), read from the front of the row.
SERIES_SUMS = ("cost", "requests", "prompt_tokens", "completion_tokens")
usage_series = Table(
    "usage_series",
    metadata,
    Column("team_id", ID, primary_key=True),
    Column("period", BigInteger, primary_key=True, autoincrement=False),
    Column("api_key_id", ID, primary_key=True),
    *(
        Column(f"{name}_{slot}", BigInteger, nullable=False, server_default="0")
        for name in SERIES_SUMS
        for slot in range(SERIES_SLOTS)
    ),
    # Clustered by the key (SQLite): a team's rows of a period are read in one pass.
    sqlite_with_rowid=False,
)
