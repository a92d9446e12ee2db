"""The ingest's grouping of a batch by minute (``store.by_minute``, Python since the records are
no longer staged one by one): each row is its group's count, sums and extremes, column by
column as ``usage_batch_minutes`` names them, against a plain per-column reference."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.usage.record import UsageRecord
from keyplane.usage.store import MINUTE_VALUES, by_minute

_BIG = 2**62
_counts = st.integers(min_value=0, max_value=_BIG)
_records = st.builds(
    UsageRecord,
    # A few minutes, so groups have many records; the edges of a minute included.
    time_ms=st.integers(min_value=0, max_value=4 * 60_000 - 1),
    team_id=st.sampled_from(["t1", "t2"]),
    api_key_id=st.sampled_from(["k1", "k2", "k3"]),
    model=st.sampled_from(["grok-4", "grok-3"]),
    endpoint=st.sampled_from(["chat", "image"]),
    status=st.sampled_from([200, 429, 500]),
    prompt_tokens=st.one_of(st.integers(0, 50), _counts),
    completion_tokens=st.one_of(st.integers(0, 50), _counts),
    cost=st.one_of(st.integers(0, 50), _counts),
    completion_cost=st.integers(0, 50),
    image_cost=st.integers(0, 50),
)


def _reference(records: list[UsageRecord]) -> dict[tuple[object, ...], dict[str, int]]:
    groups: dict[tuple[object, ...], list[UsageRecord]] = defaultdict(list)
    for r in records:
        groups[
            (r.team_id, r.time_ms // 60000 * 60, r.api_key_id, r.model, r.endpoint, r.status)
        ].append(r)
    out = {}
    for key, members in groups.items():
        values = {
            "prompt_tokens": [r.prompt_tokens for r in members],
            "completion_tokens": [r.completion_tokens for r in members],
            "total_tokens": [r.prompt_tokens + r.completion_tokens for r in members],
            "cost": [r.cost for r in members],
            "completion_cost": [r.completion_cost for r in members],
            "image_cost": [r.image_cost for r in members],
        }
        row = {"requests": len(members)}
        for name in MINUTE_VALUES:
            kind, _, value = name.partition("_")
            if kind in ("min", "max"):
                row[name] = (min if kind == "min" else max)(values[value])
            elif name != "requests":
                row[name] = sum(values[name])
        out[key] = row
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(_records, max_size=60))
def test_rows_are_each_groups_count_sums_and_extremes(records: list[UsageRecord]) -> None:
    rows = by_minute(records)
    got = {row[:6]: dict(zip(MINUTE_VALUES, row[6:], strict=True)) for row in rows}
    assert len(got) == len(rows)  # one row per group
    assert got == _reference(records)


def test_minutes_are_epoch_seconds_of_the_minute_start() -> None:
    at = [UsageRecord(t, "t", "k", "m", "chat", 200, 1, 2, 3) for t in (59_999, 60_000, 119_999)]
    assert {row[1]: row[6] for row in by_minute(at)} == {0: 1, 60: 2}  # minute: requests
