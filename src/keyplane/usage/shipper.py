"""Ships the gateway's spool to the control plane: in order, at least once, acked before dropped.

Every ``interval`` (or sooner once ``wake_bytes`` are waiting) it posts the next range of whole
frames to ``POST /internal/v1/usage`` with the gateway's feed credential. The range is named by
``(segment, start, end)`` in this gateway's spool, so the control plane can tell a resend from new
records exactly; the spool's cursor moves only on a 200. A control plane that is down or a cut
connection just means the same range is sent again, later, perhaps to another replica.

The client is aiohttp, as for the gateway's other connections (upstreams, the feed): a post
costs the gateway about a quarter of what httpx2 costs (measured: ~0.25 ms against ~1.1 ms), and
the shipper posts several times a second inside the process that serves requests.

A batch the control plane refuses outright (400: a frame that is whole and checksummed but does
not decode as a record, from a bug or a foreign writer) would be refused again forever. The
shipper halves the batch until the refused part is one frame, keeps that frame in the spool's
``dead-letter`` directory (``Spool.quarantine``), counts it (``keyplane_usage_quarantined_*``),
logs it once, and moves on: the good records around it are still counted.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import structlog
from prometheus_client import Counter

from keyplane.propagation.wire import GATEWAY_HEADER
from keyplane.usage.record import iter_frames
from keyplane.usage.spool import Batch, Spool
from keyplane.usage.wire import INGEST_PATH, MAX_BATCH_BYTES

log = structlog.get_logger("keyplane.usage")

SHIP_INTERVAL = 0.2
SYNC_INTERVAL = 1.0
MAX_BACKOFF = 2.0
#: Answers that refuse the batch itself: sending the same bytes again gets the same answer.
REFUSED = frozenset({400, 413, 422})

QUARANTINED_BATCHES = Counter(
    "keyplane_usage_quarantined_batches",
    "Usage batches the control plane refused (400) and the gateway moved to its dead-letter "
    "directory instead of retrying.",
)
QUARANTINED_BYTES = Counter(
    "keyplane_usage_quarantined_bytes",
    "Bytes of usage frames moved to the dead-letter directory.",
)


class Refused(Exception):
    """The control plane refused a batch as malformed (an answer in ``REFUSED``)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"usage ingest answered {status}")
        self.status = status
        self.detail = detail


class Shipper:
    def __init__(
        self,
        spool: Spool,
        *,
        control_urls: list[str],
        credential: str,
        gateway_id: str,
        interval: float = SHIP_INTERVAL,
        wake_bytes: int = 64 * 1024,
    ) -> None:
        self.spool = spool
        self._urls = [u.rstrip("/") for u in control_urls]
        self._turn = 0
        self._headers = {
            "Authorization": f"Bearer {credential}",
            GATEWAY_HEADER: gateway_id,
            "Content-Type": "application/octet-stream",
        }
        self._interval = interval
        self._wake_bytes = wake_bytes
        self.shipped = 0
        self.quarantined = 0
        self.connected = False
        #: The most bytes the next batch may hold; smaller while a refused batch is narrowed down.
        self._limit = MAX_BATCH_BYTES
        self._wake = asyncio.Event()

    async def run(self) -> None:
        backoff = 0.05
        last_sync = 0.0
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=10.0, sock_connect=2.0)
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers) as client:
            while True:
                now = loop.time()
                pending_sync = self.spool.dirty or self.spool.cursor_dirty
                if now - last_sync >= SYNC_INTERVAL and pending_sync:
                    last_sync = now
                    await asyncio.to_thread(self.spool.sync)
                try:
                    again = await self._ship_once(client)
                    backoff = 0.05
                except asyncio.CancelledError:
                    raise
                except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
                    if self.connected:
                        log.warning("usage_ship_failed", error=type(error).__name__)
                    self.connected = False
                    self._turn = (self._turn + 1) % len(self._urls)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                if not again:
                    await self._pause()

    async def _pause(self) -> None:
        # One interval, or less once ``wake_bytes`` are waiting (the spool sets the event).
        # A timer sets the same event: ``wait_for`` would add a task, a cancellation and a
        # ``TimeoutError`` per interval (~70,000 instructions, 5 times a second when idle).
        wake = self._wake
        self.spool.wake_at(self._wake_bytes, wake)
        timer = asyncio.get_running_loop().call_later(self._interval, wake.set)
        try:
            await wake.wait()
        finally:
            timer.cancel()
        wake.clear()

    async def _ship_once(self, client: aiohttp.ClientSession) -> bool:
        """Send the next range; whether to send again at once: more than one batch was waiting
        (a backlog, or a refused batch being narrowed down). Once caught up, the next batch
        waits for the interval or ``wake_bytes``: posting each few records as they come costs
        the control plane a request's fixed cost per few records (~4 ms of its CPU a post,
        measured), more than the gateway's own work per request."""
        span = self.spool.next_range()
        if span is None:
            return False
        segment, start, end = span
        if segment == self.spool.segment:
            # What was just appended: in the page cache, read on the loop. A hop to a thread
            # and back cost more system calls and wake-ups than the read (measured per request
            # with metering on: the shipper's part of them).
            batch = self.spool.read(segment, start, end, self._limit)
        else:  # a backlog in an older segment, perhaps from the disk
            batch = await asyncio.to_thread(self.spool.read, segment, start, end, self._limit)
        if batch.data:
            try:
                await self._post(client, batch)
            except Refused as refused:
                if not await self._refused(batch, refused):
                    return True  # narrowed: the next read takes the first half
            else:
                self.shipped += batch.end - batch.start
                # Back to full batches once past a refused part (or a refusal that went away).
                self._limit = min(MAX_BATCH_BYTES, self._limit * 2)
        self.spool.ack(batch)
        return segment != self.spool.segment or batch.end < end

    async def _post(self, client: aiohttp.ClientSession, batch: Batch) -> None:
        params = {"segment": str(batch.segment), "start": str(batch.start), "end": str(batch.end)}
        async with client.post(
            self._urls[self._turn] + INGEST_PATH, params=params, data=batch.data
        ) as response:
            body = await response.read()
            self.connected = True
            if response.status in REFUSED:
                raise Refused(response.status, body[:300].decode(errors="replace"))
            if response.status != 200:
                raise ValueError(f"usage ingest answered {response.status}")

    async def _refused(self, batch: Batch, refused: Refused) -> bool:
        """Narrow a refused batch down to one frame, then quarantine that frame; whether
        ``batch`` was quarantined (and may be acked)."""
        if sum(1 for _ in iter_frames(batch.data)) > 1:
            self._limit = max(1, len(batch.data) // 2)
            return False
        path = await asyncio.to_thread(self.spool.quarantine, batch)
        self._limit = MAX_BATCH_BYTES
        self.quarantined += 1
        QUARANTINED_BATCHES.inc()
        QUARANTINED_BYTES.inc(len(batch.data))
        log.error(
            "usage_batch_quarantined",
            status=refused.status,
            detail=refused.detail,
            segment=batch.segment,
            start=batch.start,
            end=batch.end,
            file=str(path),
        )
        return True

    async def flush(self, within: float) -> bool:
        """Ship what is waiting now (used at shutdown); whether everything got through."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                timeout = aiohttp.ClientTimeout(total=within)
                async with aiohttp.ClientSession(timeout=timeout, headers=self._headers) as client:
                    while self.spool.next_range() is not None:
                        await self._ship_once(client)
                    return True
        return False
