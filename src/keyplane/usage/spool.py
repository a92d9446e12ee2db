"""The gateway's usage spool: append-only segment files, shipped in order, dropped once acked.

The hot path copies one frame into the live segment, a shared memory map of the file: no system
call, and the pages are the kernel's page cache, so a SIGKILL of the process loses nothing that
was copied in (a process killed in the middle of a copy leaves a torn frame, which its checksum
tells apart). ``sync()`` (called off the hot path, about once a second) makes it survive power
loss too (``fdatasync`` writes back the pages dirtied through the map). The live segment's file is
``MAX_SEGMENT_BYTES`` (and a frame) long, zero past what was written: a zero length ends the
frames (``record.iter_frames``), so its used length is found by reading its frames when it is
opened, and the torn or zeroed rest is cleared before appending. Disk blocks are reserved
(``posix_fallocate``) a MiB ahead of the appends, so a full disk fails an append with ``OSError``
rather than the process with ``SIGBUS``. A segment is cut to its used length when it is closed
(rotated, or at shutdown), so closed segments hold only frames, as in the spool files of
versions before the map (``write`` per record), which read and append the same way.

A small ``cursor`` file says how far the control plane has acknowledged; a segment is deleted only
when everything in it is acknowledged, so after any crash the gateway resends from the cursor and
the control plane drops what it already has (by offset).

Everything but ``sync`` runs on the event loop's thread, and ``read`` of an older segment (a
backlog, perhaps not in the page cache); ``read`` only touches bytes below the size it is given,
which are complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import re
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from keyplane.private_files import FILE_MODE, private_dir
from keyplane.usage.record import HEADER, HEADER_SIZE, MAX_FRAME, frames_end, iter_frames

_SEGMENT = re.compile(r"(\d{12})\.spool")
CURSOR = "cursor"
#: Where batches the control plane refused (400) are kept, one file per batch.
DEAD_LETTER = "dead-letter"
#: An acknowledged segment at least this large is replaced by a fresh one.
ROTATE_BYTES = 4 * 1024 * 1024
#: A segment still waiting for its ack is closed for appends past this size.
MAX_SEGMENT_BYTES = 64 * 1024 * 1024
_pack_header = HEADER.pack_into
_crc32 = zlib.crc32
#: Disk blocks are reserved this far ahead of the appends (one ``posix_fallocate`` per MiB).
RESERVE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Batch:
    segment: int
    start: int
    end: int
    data: bytes


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        segments = sorted(
            int(m.group(1)) for p in directory.iterdir() if (m := _SEGMENT.fullmatch(p.name))
        )
        self.cursor = self._read_cursor() or ((segments[0], 0) if segments else (1, 0))
        self.cursor_dirty = False
        self._cursor_lock = threading.Lock()
        for old in [s for s in segments if s < self.cursor[0]]:
            self._path(old).unlink(missing_ok=True)  # acked before a crash, not yet removed
        self.segment = max([self.cursor[0], *segments])
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._open(self.segment)
        self.appended = 0
        #: Appended since the last ``sync``.
        self.dirty = False
        self._wake_size = -1
        self._wake: asyncio.Event | None = None

    # -- files ---------------------------------------------------------------------------------

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:012d}.spool"

    def _read_cursor(self) -> tuple[int, int] | None:
        try:
            segment, offset = (self.directory / CURSOR).read_text().split()
            return int(segment), int(offset)
        except (OSError, ValueError):
            return None

    def _write_cursor(self) -> None:
        with self._cursor_lock:  # ``sync`` writes it from a thread
            self.cursor_dirty = False
            segment, offset = self.cursor
            tmp = self.directory / (CURSOR + ".tmp")
            tmp.write_text(f"{segment} {offset}\n")
            tmp.replace(self.directory / CURSOR)

    def _open(self, segment: int) -> None:
        self._close_segment()
        self._fd = fd = os.open(self._path(segment), os.O_RDWR | os.O_CREAT, 0o600)
        size = os.fstat(fd).st_size
        # Room for the largest segment and one frame past it: appends never outgrow the map.
        capacity = -(-(max(size, MAX_SEGMENT_BYTES) + HEADER_SIZE + MAX_FRAME) // mmap.PAGESIZE)
        capacity *= mmap.PAGESIZE
        if size < capacity:
            os.ftruncate(fd, capacity)  # zeros, sparse: no disk blocks yet
        self._map = mmap.mmap(fd, capacity)
        self._capacity = capacity
        # Where the frames end: at a zero length (never written) or a torn or damaged frame
        # (power loss, or the process killed mid-copy). Read from the cursor in its segment.
        start = min(self.cursor[1] if segment == self.cursor[0] else 0, size)
        good = frames_end(self._map, start, size)
        if good < size:
            # Clear what lies past them, so that no later append ends next to stale bytes.
            os.ftruncate(fd, good)
            os.ftruncate(fd, capacity)
        self.segment = segment
        self.size = good
        #: Disk blocks are reserved up to here (those below ``good`` are written already).
        self._reserved = good

    def _close_segment(self) -> None:
        """Unmap the live segment and cut its file to what it holds. If some of it is not yet
        acknowledged (a backlog outgrew ``MAX_SEGMENT_BYTES``, or shutdown), it is synced first:
        ``sync`` only ever reaches the live segment, so nothing else would write back the pages
        copied in since its last call."""
        if self._map is not None:
            self._map.close()
            self._map = None
            os.ftruncate(self._fd, self.size)
            if self.cursor < (self.segment, self.size):
                with contextlib.suppress(OSError):
                    os.fdatasync(self._fd)  # at most about a second of records since ``sync``
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _reserve(self, end: int) -> None:
        """Reserve disk blocks past ``end`` (``OSError`` if the disk is full: the append fails,
        and is counted, instead of a page fault on a full disk killing the process)."""
        reserved = min(self._capacity, -(-end // RESERVE_BYTES) * RESERVE_BYTES)
        os.posix_fallocate(self._fd, self._reserved, reserved - self._reserved)
        self._reserved = reserved

    # -- the hot path --------------------------------------------------------------------------

    def append(self, data: bytes | bytearray) -> None:
        """Append whole frames."""
        start = self.size
        end = start + len(data)
        if end > self._reserved:
            self._reserve(end)
        assert self._map is not None
        self._map[start:end] = data  # into the page cache: no system call
        self._appended(end)

    def append_payload(self, payload: bytearray) -> None:
        """Append one record's payload, framed in place: the payload copied into the map, then
        its header written in front of it (a process killed between the two leaves a zero
        length, the end of the frames). No frame is built, no system call made."""
        start = self.size
        end = start + HEADER_SIZE + len(payload)
        if end > self._reserved:
            self._reserve(end)
        target = self._map
        assert target is not None
        target[start + HEADER_SIZE : end] = payload
        _pack_header(target, start, len(payload), _crc32(payload))  # ``header_into``, inline
        # ``_appended``, inline: a call less per request.
        self.size = end
        self.appended += 1
        self.dirty = True
        if end >= MAX_SEGMENT_BYTES or (self._wake is not None and end >= self._wake_size):
            self._rotate_or_wake()

    def _appended(self, end: int) -> None:
        self.size = end
        self.appended += 1
        self.dirty = True
        if end >= MAX_SEGMENT_BYTES or (self._wake is not None and end >= self._wake_size):
            self._rotate_or_wake()

    def _rotate_or_wake(self) -> None:
        if self.size >= MAX_SEGMENT_BYTES:
            self._open(self.segment + 1)
        if self._wake is not None and self.size >= self._wake_size:
            self._wake.set()
            self._wake = None

    def wake_at(self, waiting: int, event: asyncio.Event) -> None:
        """Set ``event`` once about ``waiting`` bytes are waiting to be shipped."""
        segment, offset = self.cursor
        self._wake_size = (offset if segment == self.segment else 0) + waiting
        self._wake = event
        if self.size >= self._wake_size:
            event.set()

    # -- shipping --------------------------------------------------------------------------------

    def next_range(self) -> tuple[int, int, int] | None:
        """``(segment, start, end)`` of what is waiting, in the oldest segment holding some."""
        segment, offset = self.cursor
        if segment == self.segment:
            return None if self.size <= offset else (segment, offset, self.size)
        try:
            size = self._path(segment).stat().st_size
        except FileNotFoundError:
            size = 0
        if offset >= size:
            self._advance()
            return self.next_range()
        return segment, offset, size

    def read(self, segment: int, start: int, end: int, limit: int) -> Batch:
        """The whole frames in ``[start, end)``, at most ``limit`` bytes of them (at least one).
        From the segment being appended to: a copy out of its map, pages just written (cheap
        enough for the event loop); from an older one, the file opened."""
        live = segment == self.segment and self._map is not None
        if live and end - start <= limit and end <= self.size:
            # The usual batch: all that waits in the live segment, which holds only whole frames
            # below ``size`` (appended here, or read through when it was opened). Not walked frame
            # by frame (~0.7 µs a record, on the loop); the control plane checks every frame.
            assert self._map is not None
            return Batch(segment, start, end, self._map[start:end])
        # Room for one frame at least, whatever the limit.
        size = min(end - start, max(limit, HEADER_SIZE + MAX_FRAME))
        if live:
            assert self._map is not None
            data = self._map[start : start + size]
        else:
            with open(self._path(segment), "rb") as f:
                f.seek(start)
                data = f.read(size)
        last = start
        for _, frame_end, _ in iter_frames(data, start):
            if frame_end - start > limit and last > start:
                break
            last = frame_end
        if last == start and end > start:
            # A damaged frame (the disk, not us: torn tails are cut at open): nothing after it
            # can be framed; skip to the end of what is there.
            return Batch(segment, start, end, b"")
        return Batch(segment, start, last, data[: last - start])

    def ack(self, batch: Batch) -> None:
        """Move the cursor past ``batch``. The cursor file is written by ``sync`` (once a second)
        or when a segment is dropped: a cursor lost to a crash only means a resend, which the
        control plane recognizes by offset."""
        if (batch.segment, batch.start) != self.cursor:
            return  # an old answer; the cursor has moved on
        self.cursor = (batch.segment, batch.end)
        self.cursor_dirty = True
        if batch.segment != self.segment:
            with contextlib.suppress(FileNotFoundError):
                if batch.end >= self._path(batch.segment).stat().st_size:
                    self._advance()
        elif batch.end >= self.size and self.size >= ROTATE_BYTES:
            self._open(self.segment + 1)
            self.cursor = (self.segment, 0)
            self._write_cursor()  # before the old segment goes
            self._path(batch.segment).unlink(missing_ok=True)

    def _advance(self) -> None:
        old = self.cursor[0]
        self.cursor = (old + 1, 0)
        self._write_cursor()
        self._path(old).unlink(missing_ok=True)

    def quarantine(self, batch: Batch) -> Path:
        """Keep a batch the control plane refuses outright on disk, synced, before it is acked:
        ``dead-letter/<segment>-<start>-<end>.spool`` holds its frames as they were (the same
        format as a segment, so it can be inspected or replayed). A resend after a crash
        rewrites the same file."""
        directory = private_dir(self.directory / DEAD_LETTER)
        path = directory / f"{batch.segment:012d}-{batch.start}-{batch.end}.spool"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            view = memoryview(batch.data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    # -- durability -------------------------------------------------------------------------------

    def sync(self) -> None:
        """Power-loss durability for what is appended so far, and the cursor to disk (call it
        off the hot path)."""
        self.dirty = False
        with contextlib.suppress(OSError):
            os.fdatasync(self._fd)  # the pages written through the map, and the size
        if self.cursor_dirty:
            self._write_cursor()

    def close(self) -> None:
        if self.cursor_dirty:
            self._write_cursor()
        self._close_segment()
