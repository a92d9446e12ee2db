"""The gateway's usage spool: what is appended is read back whole, in order, until acked; a
torn tail is cut; a reopened spool resumes from its cursor; acked segments are dropped."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.usage import spool as spool_module
from keyplane.usage.record import UsageRecord, decode, frame, frame_into, iter_frames
from keyplane.usage.spool import Spool


def rec(i: int) -> UsageRecord:
    return UsageRecord(1_000 + i, "team", f"key-{i}", "grok-4", "chat", 200, i, 2 * i, 3 * i)


def drain(spool: Spool, limit: int = 10_000) -> list[UsageRecord]:
    """Read and ack everything waiting, as the shipper would; the records in order."""
    out: list[UsageRecord] = []
    while (span := spool.next_range()) is not None:
        batch = spool.read(*span, limit)
        out += [decode(payload) for _, _, payload in iter_frames(batch.data, batch.start)]
        spool.ack(batch)
    return out


def test_appended_records_come_back_in_order_and_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(50):
        spool.append(frame(rec(i)))
    assert drain(spool, limit=300) == [rec(i) for i in range(50)]
    assert drain(spool) == []


def test_a_reopened_spool_resends_only_what_was_not_acked(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(10):
        spool.append(frame(rec(i)))
    span = spool.next_range()
    assert span is not None
    segment, start, _ = span
    first = spool.read(segment, start, start + len(frame(rec(0))) * 4, 10_000)  # four, acked
    spool.ack(first)
    spool.close()  # the process dies here: nothing else reached the control plane
    reopened = Spool(tmp_path)
    assert drain(reopened) == [rec(i) for i in range(4, 10)]


def test_a_torn_tail_is_cut_before_appending(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(3):
        spool.append(frame(rec(i)))
    spool.close()
    (segment,) = [p for p in tmp_path.iterdir() if p.suffix == ".spool"]
    with segment.open("ab") as f:
        f.write(frame(rec(3))[:-5])  # power loss in the middle of a write
    reopened = Spool(tmp_path)
    reopened.append(frame(rec(4)))
    assert drain(reopened) == [rec(0), rec(1), rec(2), rec(4)]


def test_segments_rotate_and_acked_ones_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "MAX_SEGMENT_BYTES", 400)
    monkeypatch.setattr(spool_module, "ROTATE_BYTES", 200)
    spool = Spool(tmp_path)
    for i in range(40):
        spool.append(frame(rec(i)))
    assert len([p for p in tmp_path.iterdir() if p.suffix == ".spool"]) > 2
    assert drain(spool, limit=150) == [rec(i) for i in range(40)]
    assert len([p for p in tmp_path.iterdir() if p.suffix == ".spool"]) == 1
    spool.append(frame(rec(99)))
    assert drain(spool) == [rec(99)]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20), st.integers(40, 500), st.booleans()), max_size=12))
def test_any_interleaving_of_appends_reads_and_restarts_loses_and_repeats_nothing(
    steps: list[tuple[int, int, bool]],
) -> None:
    with tempfile.TemporaryDirectory() as raw:
        directory = Path(raw)
        spool = Spool(directory)
        made: list[UsageRecord] = []
        got: list[UsageRecord] = []
        for appends, limit, restart in steps:
            for _ in range(appends):
                made.append(rec(len(made)))
                spool.append(frame(made[-1]))
            span = spool.next_range()
            if span is not None:
                batch = spool.read(*span, limit)
                got += [decode(p) for _, _, p in iter_frames(batch.data, batch.start)]
                spool.ack(batch)
            if restart:
                spool.close()
                spool = Spool(directory)
        got += drain(spool)
        spool.close()
        assert got == made
        assert os.listdir(directory)  # the cursor and the live segment remain


_count = st.integers(min_value=0, max_value=2**62)
_fields = st.tuples(
    _count,
    st.text(max_size=36),
    st.text(max_size=36),
    st.text(max_size=128),
    st.text(max_size=32),
    st.integers(min_value=0, max_value=999),
    _count,
    _count,
    _count,
    _count,
    _count,
)


@settings(deadline=None)
@given(st.lists(_fields, min_size=1, max_size=4))
def test_a_frame_written_into_a_reused_buffer_is_the_records_frame(
    records: list[tuple[int, str, str, str, str, int, int, int, int, int, int]],
) -> None:
    """The gateway frames each record's fields into one reused buffer (``Meter.finish``): the
    bytes are ``frame(UsageRecord(...))``'s, whatever the buffer held before."""
    buffer = bytearray()
    for fields in records:
        assert bytes(frame_into(buffer, fields)) == frame(UsageRecord(*fields))
