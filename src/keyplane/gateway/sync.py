"""The gateway's feed follower: snapshot once, then long-poll changes after its revision, forever.

A gateway with no replica yet first asks for the control plane's seed file (``wire.SEED_PATH``): a
ready-made replica file it checks (SHA-256, layout), renames into place and opens, then catches up
from its revision through the feed; a download cut short resumes with ``Range``. With no seed (or
a bad one) it takes the snapshot as rows instead.

It never stops the gateway from serving: while the control plane is unreachable the replica keeps
enforcing what it last applied, and the follower retries with a capped backoff. Each poll's
``after`` is the ack of everything applied so far.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import Any, BinaryIO

import aiohttp
import msgspec
import structlog

from keyplane.gateway.replica import Change, Replica, ReplicaStore
from keyplane.private_files import private_file
from keyplane.propagation import wire
from keyplane.propagation.wire import CHANGES_PATH, GATEWAY_HEADER, ROWS, SNAPSHOT_PATH

log = structlog.get_logger("keyplane.gateway.sync")
_decode = msgspec.json.Decoder(dict[str, Any]).decode

POLL_WAIT = 5.0
MAX_BACKOFF = 2.0
#: Snapshot rows written (and committed) together.
SNAPSHOT_CHUNK = 5000
#: Seed bytes written (and hashed, off the event loop) together.
SEED_WRITE = 4 << 20
#: Downloads of the seed tried (each resuming the last) before taking the rows instead.
SEED_TRIES = 5


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
        # An empty replica file is seeded whole, if the control plane has a seed ready.
        self._seed_tries = SEED_TRIES if store.path is not None else 0
        self.seeded = 0

    async def run(self) -> None:
        backoff = 0.05
        need_snapshot = self._replica.revision == 0 or self._store.staged()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=2.0, sock_read=self._wait + 10)
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers) as session:
            while True:
                try:
                    if need_snapshot and self._seeds():
                        self._seed_tries -= 1
                        if await self._seed(session):
                            need_snapshot = False
                        self._seed_tries = 0  # seeded, or none to take: rows from now on
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

    def _seeds(self) -> bool:
        """This follower takes a seed: its replica is empty (never a half-staged one)."""
        return self._seed_tries > 0 and self._store.revision == 0 and not self._store.staged()

    async def _seed(self, session: aiohttp.ClientSession) -> bool:
        """Download the seed file beside the replica (resuming a part left by a cut download),
        check it, and adopt it as the replica. False: there is none to take, or it is bad (said
        loudly), and the rows are to be taken instead; a cut download raises (to be retried)."""
        assert self._store.path is not None
        t0, cpu = time.perf_counter(), time.process_time()
        directory = self._store.path.parent
        parts = sorted(directory.glob("seed-*.part"))
        part = parts[-1] if parts else None
        headers: dict[str, str] = {}
        if part is not None:
            have = part.stat().st_size
            headers = {"Range": f"bytes={have}-", "If-Range": f'"{part.stem[5:]}"'}
        async with session.get(self._url + wire.SEED_PATH, headers=headers) as response:
            if response.status == 404:
                log.info("seed_not_ready")
                return False
            if response.status not in (200, 206):
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message="seed refused"
                )
            schema = response.headers.get(wire.SEED_SCHEMA_HEADER)
            if schema != str(wire.REPLICA_SCHEMA):
                log.error("seed_layout_unknown", layout=schema, known=wire.REPLICA_SCHEMA)
                return False
            sha = response.headers[wire.SEED_DIGEST_HEADER].lower()
            revision = int(response.headers[wire.SEED_REVISION_HEADER])
            target = directory / f"seed-{sha}.part"
            resumed = response.status == 206 and part == target
            for stale in parts:
                if stale != target or not resumed:
                    stale.unlink(missing_ok=True)
            offset = target.stat().st_size if resumed else 0
            if resumed and response.headers.get("content-range", "").split("-")[0] != (
                f"bytes {offset}"
            ):
                raise ValueError("the seed resumed at another byte than asked")
            size = offset + int(response.headers["content-length"])
            hasher = await asyncio.to_thread(wire.file_sha256, target if resumed else None)
            private_file(target)
            times = {"answered": time.perf_counter() - t0, "resumed_at": float(offset)}
            with target.open("ab" if resumed else "wb") as file:
                pending: list[bytes] = []
                held = 0

                def flush(blocks: list[bytes]) -> None:
                    for block in blocks:
                        hasher.update(block)
                        file.write(block)

                try:
                    async for chunk in response.content.iter_chunked(1 << 20):
                        pending.append(chunk)
                        held += len(chunk)
                        if held >= SEED_WRITE:
                            await asyncio.to_thread(flush, pending)
                            pending, held = [], 0
                finally:
                    await asyncio.to_thread(flush, pending)  # what came is kept, to resume
                await asyncio.to_thread(_durable, file)
        times["received"] = time.perf_counter() - t0
        if target.stat().st_size != size:
            raise ValueError("seed cut short")
        if hasher.hexdigest() != sha:
            log.error("seed_digest_mismatch", revision=revision, bytes=size)
            target.unlink(missing_ok=True)
            return False
        try:
            found, keys = await asyncio.to_thread(wire.seed_revision, target)
        except ValueError as error:
            log.error("seed_unreadable", error=str(error))
            target.unlink(missing_ok=True)
            return False
        if found != revision:
            log.error("seed_revision_mismatch", said=revision, holds=found)
            target.unlink(missing_ok=True)
            return False
        o0 = time.perf_counter()
        await asyncio.to_thread(self._store.adopt, target)
        times["open"] = time.perf_counter() - o0
        times["bytes"] = float(size)
        times["total"] = time.perf_counter() - t0
        times["cpu"] = time.process_time() - cpu  # the whole process's, while it downloaded
        self.timings = times
        self._replica.loaded(revision)
        self.seeded += 1
        self.snapshots += 1
        log.info(
            "snapshot_applied",
            source="seed",
            revision=revision,
            keys=keys,
            **{name: round(value, 3) for name, value in times.items()},
        )
        return True

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


def _durable(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())
