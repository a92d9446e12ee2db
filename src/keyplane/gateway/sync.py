"""The gateway's feed follower: snapshot once, then long-poll changes after its revision, forever.

It never stops the gateway from serving: while the control plane is unreachable the replica keeps
enforcing what it last applied, and the follower retries with a capped backoff. Each poll's
``after`` is the ack of everything applied so far.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import msgspec
import structlog

from keyplane.gateway.replica import Change, Replica, ReplicaStore
from keyplane.propagation.wire import CHANGES_PATH, GATEWAY_HEADER, ROWS, SNAPSHOT_PATH

log = structlog.get_logger("keyplane.gateway.sync")
_decode = msgspec.json.Decoder(dict[str, Any]).decode

POLL_WAIT = 5.0
MAX_BACKOFF = 2.0
#: Snapshot rows written (and committed) together.
SNAPSHOT_CHUNK = 5000


def _control_line(line: bytes) -> dict[str, Any]:
    """A snapshot line that is not a row: its header (``revision``) or its end (``end``). Any
    other line (a view where a row was asked for, a format this gateway does not know) fails the
    transfer loudly, to be retried; it is never taken for an empty snapshot."""
    try:
        item = _decode(line)
    except msgspec.DecodeError:
        item = {}
    if "revision" not in item and "end" not in item:
        # Not the line itself: a view holds digests.
        log.error("snapshot_line_unrecognised", length=len(line), starts=line[:1].hex())
        raise ValueError("a snapshot line this gateway does not recognise")
    return item


class FeedFollower:
    def __init__(
        self,
        *,
        control_urls: list[str],
        credential: str,
        gateway_id: str,
        replica: Replica,
        store: ReplicaStore,
        poll_wait: float = POLL_WAIT,
    ) -> None:
        if not control_urls:
            raise ValueError("a feed follower needs at least one control-plane URL")
        self._urls = [u.rstrip("/") for u in control_urls]
        self._turn = 0
        self._headers = {"Authorization": f"Bearer {credential}", GATEWAY_HEADER: gateway_id}
        self._replica = replica
        self._store = store
        self._wait = poll_wait
        self.connected = False
        self.snapshots = 0
        #: Where the last snapshot's wall time went, in seconds (and its bytes): see ``_snapshot``.
        self.timings: dict[str, float] = {}
        # A snapshot left half-way (by a dropped connection or a restart) is resumed, not redone.
        self._resume = True

    async def run(self) -> None:
        backoff = 0.05
        need_snapshot = self._replica.revision == 0 or self._store.staged()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=2.0, sock_read=self._wait + 10)
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers) as session:
            while True:
                try:
                    if need_snapshot:
                        await self._snapshot(session)
                        need_snapshot = False
                    need_snapshot = await self._poll(session)
                    if not self.connected:
                        log.info("feed_connected", revision=self._replica.revision)
                    self.connected = True
                    backoff = 0.05
                except asyncio.CancelledError:
                    raise
                except (
                    aiohttp.ClientError,
                    TimeoutError,
                    ValueError,
                    KeyError,
                    msgspec.DecodeError,
                ) as error:
                    if self.connected:
                        log.warning("feed_lost", url=self._url, error=type(error).__name__)
                    self.connected = False
                    # Several control-plane replicas: try the next one.
                    self._turn = (self._turn + 1) % len(self._urls)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)

    @property
    def _url(self) -> str:
        return self._urls[self._turn]

    async def _poll(self, session: aiohttp.ClientSession) -> bool:
        """One long-poll; returns whether a snapshot is needed."""
        # Until the first answer, don't park: a gateway that starts current is synced at once.
        wait = self._wait if self.connected else 0
        params = {"after": str(self._replica.revision), "wait": str(wait)}
        async with session.get(self._url + CHANGES_PATH, params=params) as response:
            if response.status != 200:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message="feed refused"
                )
            answer: Mapping[str, Any] = await response.json()
        if answer.get("snapshotRequired"):
            return True
        fresh = [
            Change(int(c["revision"]), c["op"], c["view"])
            for c in answer["changes"]
            if int(c["revision"]) > self._replica.revision
        ]
        if fresh:
            fresh.sort(key=lambda c: c.revision)
            await asyncio.to_thread(self._store.save_changes, fresh, fresh[-1].revision)
            self._replica.apply(fresh)
        return False

    async def _snapshot(self, session: aiohttp.ClientSession) -> None:
        """Stream a snapshot into the store's staging tables in committed chunks, then swap it in.
        A transfer cut short resumes after the last key stored (``after=``), on the next try or
        after a restart; the replica then serves the first part's revision and the feed replays
        what changed since."""
        t0 = time.perf_counter()
        times = {"stored": 0.0, "waited": 0.0, "bytes": 0.0}

        def add(rows: list[bytes]) -> None:
            s0 = time.perf_counter()
            staged.add(rows)
            times["stored"] += time.perf_counter() - s0

        staged = await asyncio.to_thread(self._store.stage, fresh=not self._resume)
        self._resume = True  # until it completes, a failed transfer picks up where it stopped
        params = {"format": ROWS}
        if staged.after is not None:
            params["after"] = staged.after
        ended: int | None = None  # the keys the control plane says it sent
        async with session.get(self._url + SNAPSHOT_PATH, params=params) as response:
            times["answered"] = time.perf_counter() - t0
            if response.status != 200:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message="snapshot refused"
                )
            rows: list[bytes] = []
            pending: asyncio.Future[None] | None = None
            rest = b""
            try:
                async for chunk in response.content.iter_chunked(1 << 18):
                    if not times["bytes"]:
                        times["first_byte"] = time.perf_counter() - t0
                    times["bytes"] += len(chunk)
                    lines = (rest + chunk).split(b"\n")
                    rest = lines.pop()
                    for line in lines:
                        if line[:1] == b"[":
                            rows.append(line)
                        elif line.strip():
                            item = _control_line(line)
                            if "revision" in item:
                                staged.part(int(item["revision"]))
                            else:
                                ended = int(item["end"])
                    if len(rows) >= SNAPSHOT_CHUNK:
                        if pending is not None:
                            w0 = time.perf_counter()
                            await pending  # one chunk is written while the next one arrives
                            times["waited"] += time.perf_counter() - w0
                        pending = asyncio.ensure_future(asyncio.to_thread(add, rows))
                        rows = []
            finally:
                if pending is not None:
                    await asyncio.wait([pending])
            times["received"] = time.perf_counter() - t0
            if pending is not None:
                pending.result()
            await asyncio.to_thread(add, rows)
        if ended is None or staged.revision is None:
            raise ValueError("snapshot cut short")
        if ended != staged.keys:
            log.error("snapshot_count_mismatch", sent=ended, stored=staged.keys)
            raise ValueError("the snapshot's rows are not the count it ends with")
        f0 = time.perf_counter()
        revision = await asyncio.to_thread(staged.finish)
        times["finish"] = time.perf_counter() - f0
        times["total"] = time.perf_counter() - t0
        self.timings = times
        self._resume = False
        self._replica.loaded(revision)
        self.snapshots += 1
        self.connected = True
        log.info(
            "snapshot_applied",
            revision=revision,
            keys=staged.keys,
            **{name: round(value, 3) for name, value in times.items()},
        )
