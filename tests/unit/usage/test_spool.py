"""The gateway's usage spool: what is appended is read back whole, in order, until acked; a
torn tail is cut; a reopened spool resumes from its cursor; acked segments are dropped; what was
copied into the live segment's map survives a SIGKILL; the framing tells zero fill, a torn frame
and a record apart."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.usage import spool as spool_module
from keyplane.usage.record import (
    UsageRecord,
    decode,
    frame,
    frames_end,
    iter_frames,
    payload_into,
)
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


def test_a_segment_closed_with_frames_not_yet_acked_is_synced_and_an_acked_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Power loss cannot be staged here: what is checked is that the pages reach fdatasync.
    monkeypatch.setattr(spool_module, "MAX_SEGMENT_BYTES", 400)
    monkeypatch.setattr(spool_module, "ROTATE_BYTES", 200)
    synced: list[str] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    spool = Spool(tmp_path)
    while spool.segment == 1:  # a backlog: the control plane has acked nothing
        spool.append(frame(rec(spool.appended)))
    assert [Path(p).name for p in synced] == ["000000000001.spool"]
    synced.clear()
    drain(spool)  # everything acked: the live segment is replaced once past ROTATE_BYTES
    for i in range(8):
        spool.append(frame(rec(i)))
        drain(spool)
    assert spool.segment > 2
    assert synced == []
    spool.append(frame(rec(0)))
    spool.close()  # shutdown with one record waiting
    assert [Path(p).name for p in synced] == [f"{spool.segment:012d}.spool"]


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
def test_a_payload_framed_in_the_spool_is_the_records_frame(
    records: list[tuple[int, str, str, str, str, int, int, int, int, int, int]],
) -> None:
    """The gateway encodes each record's fields into one reused buffer and frames it in the
    spool's map (``Meter.finish``): the bytes are ``frame(UsageRecord(...))``'s, whatever the
    buffer held before."""
    with tempfile.TemporaryDirectory() as raw:
        spool = Spool(Path(raw))
        buffer = bytearray()
        for fields in records:
            payload_into(fields, buffer)
            spool.append_payload(buffer)
        spool.close()
        written = segment_file(Path(raw)).read_bytes()
    assert written == b"".join(frame(UsageRecord(*fields)) for fields in records)


def segment_file(directory: Path) -> Path:
    (path,) = [p for p in directory.iterdir() if p.suffix == ".spool"]
    return path


def test_a_spool_killed_without_closing_resumes_after_its_last_frame(tmp_path: Path) -> None:
    """The live segment is zero past its frames (its file is its map's length); a process that
    died without closing it leaves it so, and the reopened spool finds the end by reading."""
    spool = Spool(tmp_path)
    for i in range(5):
        spool.append(frame(rec(i)))
    used = spool.size
    assert segment_file(tmp_path).stat().st_size > used  # zero fill past the frames
    reopened = Spool(tmp_path)  # ``spool`` is never closed: as after a SIGKILL
    assert reopened.size == used
    reopened.append(frame(rec(5)))
    assert drain(reopened) == [rec(i) for i in range(6)]
    reopened.close()
    assert segment_file(tmp_path).stat().st_size == reopened.size  # cut to its frames on close


def test_a_frame_torn_mid_copy_is_cleared_before_the_next_append(tmp_path: Path) -> None:
    """A process killed in the middle of copying a frame leaves its first bytes: cut and zeroed
    when the segment is opened, so no later, shorter frame ends next to its stale bytes."""
    spool = Spool(tmp_path)
    for i in range(3):
        spool.append(frame(rec(i)))
    torn_at = spool.size
    long_one = UsageRecord(9, "team", "k" * 36, "m" * 100, "chat", 200, 1, 2, 3)
    with segment_file(tmp_path).open("r+b") as f:
        f.seek(torn_at)
        f.write(frame(long_one)[:-3])
    reopened = Spool(tmp_path)
    assert reopened.size == torn_at
    reopened.append(frame(rec(3)))
    reopened.append(frame(rec(4)))
    assert drain(reopened) == [rec(i) for i in range(5)]


def test_a_spool_file_of_the_write_per_record_version_is_read_and_appended_to(
    tmp_path: Path,
) -> None:
    """Upgrade: a segment written a frame per ``write`` (the file exactly its frames, no zero
    fill) has the same framing; it is read as it is and appended to in place."""
    with (tmp_path / "000000000001.spool").open("wb") as f:
        for i in range(4):
            f.write(frame(rec(i)))
    spool = Spool(tmp_path)
    spool.append(frame(rec(4)))
    assert drain(spool) == [rec(i) for i in range(5)]


def test_what_was_copied_in_survives_a_sigkill(tmp_path: Path) -> None:
    """The page cache is the kernel's: a process killed right after its appends (no close, no
    sync) leaves every frame it copied in."""
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from keyplane.usage.record import UsageRecord, frame\n"
        "from keyplane.usage.spool import Spool\n"
        "spool = Spool(Path(sys.argv[1]))\n"
        "for i in range(2000):\n"
        "    spool.append(frame(UsageRecord(1000 + i, 'team', f'key-{i}', 'grok-4', 'chat',"
        " 200, i, 2 * i, 3 * i)))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert drain(Spool(tmp_path)) == [rec(i) for i in range(2000)]


_record = st.builds(
    UsageRecord,
    st.integers(0, 2**62),
    st.text(max_size=36),
    st.text(max_size=36),
    st.text(max_size=128),
    st.text(max_size=32),
    st.integers(0, 999),
    st.integers(0, 2**62),
    st.integers(0, 2**62),
    st.integers(0, 2**62),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_record, min_size=1, max_size=12),
    st.sampled_from(["truncate", "zero fill", "zeroed range", "bit flip"]),
    st.data(),
)
def test_the_reader_yields_exactly_the_intact_frames_before_any_damage(
    records: list[UsageRecord], damage: str, data: st.DataObject
) -> None:
    """Zero fill (never written), a torn frame (cut short, or partly zero: a page not written
    back) and a flipped bit all end the frames: the reader yields exactly those wholly before
    the first changed byte, and ``frames_end`` is where they end. (A zero header is not an empty
    frame, though ``crc32(b"") == 0``.)"""
    written = b"".join(frame(r) for r in records)
    ends = list(itertools.accumulate(len(frame(r)) for r in records))
    blob = bytearray(written)
    at = data.draw(st.integers(0, len(blob) - 1), label="at")
    if damage == "truncate":
        del blob[at:]
    elif damage == "zero fill":  # from ``at`` on, and past the end: a preallocated segment
        blob[at:] = bytes(len(blob) - at + data.draw(st.integers(0, 300), label="fill"))
    elif damage == "zeroed range":
        stop = data.draw(st.integers(at, len(blob)), label="stop")
        blob[at:stop] = bytes(stop - at)
    else:
        blob[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    # The first byte that differs from what was written (a zeroed byte may have been zero).
    changed = next(
        (i for i, (a, b) in enumerate(zip(blob, written, strict=False)) if a != b),
        min(len(blob), len(written)),
    )
    intact = [r for r, end in zip(records, ends, strict=True) if end <= changed]
    assert [decode(p) for _, _, p in iter_frames(bytes(blob))] == intact
    assert frames_end(bytes(blob), 0, len(blob)) == (ends[len(intact) - 1] if intact else 0)
