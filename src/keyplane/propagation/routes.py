"""The feed on the control plane: ``/internal/v1/snapshot`` and ``/internal/v1/changes``.

Not part of the public Management API (kept out of /openapi.json); only gateways holding a
cluster credential may call it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Iterator
from typing import Annotated, Any, BinaryIO

import msgspec
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from keyplane.domain.errors import InvalidArgument, NotFound
from keyplane.propagation import feed
from keyplane.propagation.notifier import ChangeNotifier
from keyplane.propagation.seed import SeedKeeper
from keyplane.propagation.wire import (
    CHANGES_PATH,
    GATEWAY_HEADER,
    MAX_BATCH,
    MAX_WAIT_SECONDS,
    REPLICA_SCHEMA,
    ROWS,
    SEED_DIGEST_HEADER,
    SEED_PATH,
    SEED_REVISION_HEADER,
    SEED_SCHEMA_HEADER,
    SNAPSHOT_PATH,
    row_to_view,
)
from keyplane.services.context import Context

_LINES_PER_CHUNK = 1000
#: Bytes of the seed file read and sent at a time: what serving one costs in memory.
_SEED_CHUNK = 1 << 20
_encode = msgspec.json.Encoder().encode


async def _unless_gone(request: Request, waiting: Awaitable[int], fallback: int) -> int:
    """``waiting``'s answer, or ``fallback`` as soon as the gateway hangs up: a long-poll must not
    outlive its gateway (a shutdown would wait for it, then cancel it with a traceback)."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    wait_task = asyncio.ensure_future(waiting)
    gone_task = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({wait_task, gone_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone_task.cancel()
        wait_task.cancel()
    return wait_task.result() if wait_task.done() and not wait_task.cancelled() else fallback


def _resume_at(range_header: str | None, if_range: str | None, etag: str, size: int) -> int:
    """Where to start sending the seed: the N of ``Range: bytes=N-`` when ``If-Range`` names this
    very file (RFC 9110; any other range form is answered whole), else 0."""
    if range_header is None or if_range != etag:
        return 0
    unit, _, spec = range_header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip() != "bytes" or not dash or last or not first.isdigit():
        return 0
    return int(first) if int(first) < size else 0


def _file_chunks(file: BinaryIO, start: int) -> Iterator[bytes]:
    """``file`` from ``start``, a bounded chunk at a time; closed at the end (or on disconnect)."""
    with file:
        file.seek(start)
        while chunk := file.read(_SEED_CHUNK):
            yield chunk


def feed_router(
    ctx: Context, notifier: ChangeNotifier, seeds: SeedKeeper | None = None
) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    acks = feed.AckBook()

    def gateway_id(value: str | None, authorization: str | None) -> str:
        if not value or len(value) > 128 or not value.isprintable():
            feed.authenticate_gateway(ctx, authorization)  # who is asking comes first: 401
            raise InvalidArgument(
                "a gateway id of 1-128 characters is required", field=GATEWAY_HEADER
            )
        return value

    @router.get(SNAPSHOT_PATH)
    def snapshot(
        after: Annotated[str | None, Query(max_length=64)] = None,
        shape: Annotated[str | None, Query(alias="format", max_length=16)] = None,
        authorization: Annotated[str | None, Header()] = None,
        gateway: Annotated[str | None, Header(alias=GATEWAY_HEADER)] = None,
    ) -> StreamingResponse:
        gid = gateway_id(gateway, authorization)
        cluster = feed.authenticate_gateway_as(ctx, authorization, gid)
        as_rows = shape == ROWS

        def row_chunks() -> Iterator[bytes]:
            # The store writes each row's JSON; a chunk is one batch of them, joined.
            sent = 0
            for item in feed.snapshot_json(ctx, after=after):
                if isinstance(item, int):
                    acks.served(ctx, gateway_id=gid, cluster=cluster, revision=item)
                    yield _encode({"revision": item}) + b"\n"
                else:
                    sent += len(item)
                    item.append("")
                    yield "\n".join(item).encode()
            yield _encode({"end": sent}) + b"\n"

        def chunks() -> Iterator[bytes]:
            # Bounded chunks from a streaming read: the control plane's memory does not grow
            # with the snapshot.
            batch: list[bytes] = []
            sent = 0
            for item in feed.snapshot_rows(ctx, after=after):
                if isinstance(item, int):
                    acks.served(ctx, gateway_id=gid, cluster=cluster, revision=item)
                    batch.append(_encode({"revision": item}))
                    continue
                item[14] = json.loads(item[14])
                batch.append(_encode(row_to_view(item)))
                sent += 1
                if len(batch) >= _LINES_PER_CHUNK:
                    yield b"\n".join(batch) + b"\n"
                    batch.clear()
            batch.append(_encode({"end": sent}))
            yield b"\n".join(batch) + b"\n"

        body = row_chunks() if as_rows else chunks()
        return StreamingResponse(body, media_type="application/x-ndjson")

    @router.get(SEED_PATH)
    def seed(
        range_header: Annotated[str | None, Header(alias="range")] = None,
        if_range: Annotated[str | None, Header(alias="if-range")] = None,
        authorization: Annotated[str | None, Header()] = None,
        gateway: Annotated[str | None, Header(alias=GATEWAY_HEADER)] = None,
    ) -> StreamingResponse:
        gid = gateway_id(gateway, authorization)
        cluster = feed.authenticate_gateway_as(ctx, authorization, gid)
        found = None if seeds is None else seeds.ready()
        file: BinaryIO | None = None
        if found is not None:
            try:
                # Opened here: a newer seed may unlink this file; the download goes on reading it.
                file = found.path.open("rb")
            except FileNotFoundError:
                file = None
        if found is None or file is None:
            raise NotFound("No seed file is ready: take the snapshot.")
        size = os.fstat(file.fileno()).st_size
        etag = f'"{found.sha256}"'
        start = _resume_at(range_header, if_range, etag, size)
        acks.served(ctx, gateway_id=gid, cluster=cluster, revision=found.revision)
        headers = {
            "content-length": str(size - start),
            "accept-ranges": "bytes",
            "etag": etag,
            SEED_DIGEST_HEADER: found.sha256,
            SEED_REVISION_HEADER: str(found.revision),
            SEED_SCHEMA_HEADER: str(REPLICA_SCHEMA),
        }
        if start:
            headers["content-range"] = f"bytes {start}-{size - 1}/{size}"
        return StreamingResponse(
            _file_chunks(file, start),
            status_code=206 if start else 200,
            headers=headers,
            media_type="application/vnd.sqlite3",
        )

    @router.get(CHANGES_PATH)
    async def changes(
        request: Request,
        after: Annotated[int, Query(ge=0)],
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS)] = feed.POLL_WAIT,
        limit: Annotated[int, Query(ge=1, le=MAX_BATCH)] = MAX_BATCH,
        authorization: Annotated[str | None, Header()] = None,
        gateway: Annotated[str | None, Header(alias=GATEWAY_HEADER)] = None,
    ) -> dict[str, Any]:
        gid = await run_in_threadpool(gateway_id, gateway, authorization)
        cluster = await run_in_threadpool(feed.authenticate_gateway_as, ctx, authorization, gid)
        # ``after`` is what the gateway has applied: that is its ack, believed up to what it has
        # been served (and the head).
        await run_in_threadpool(acks.ack, ctx, gateway_id=gid, cluster=cluster, revision=after)
        answer = await run_in_threadpool(feed.read_changes, ctx, after=after, limit=limit)
        if not answer.changes and not answer.snapshot_required and wait > 0:
            newest = await _unless_gone(request, notifier.wait_beyond(after, wait), after)
            if newest > after:
                answer = await run_in_threadpool(feed.read_changes, ctx, after=after, limit=limit)
        if not answer.snapshot_required:
            await run_in_threadpool(
                acks.served, ctx, gateway_id=gid, cluster=cluster, revision=answer.revision
            )
        return {
            "revision": answer.revision,
            "snapshotRequired": answer.snapshot_required,
            "changes": [
                {"revision": c.revision, "op": c.op, "view": c.view} for c in answer.changes
            ],
        }

    return router
