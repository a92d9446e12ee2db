"""The feed on the control plane: ``/internal/v1/snapshot`` and ``/internal/v1/changes``.

Not part of the public Management API (kept out of /openapi.json); only gateways holding a
cluster credential may call it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Iterator
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from keyplane.domain.errors import InvalidArgument
from keyplane.propagation import feed
from keyplane.propagation.notifier import ChangeNotifier
from keyplane.propagation.wire import (
    CHANGES_PATH,
    GATEWAY_HEADER,
    MAX_BATCH,
    MAX_WAIT_SECONDS,
    ROWS,
    SNAPSHOT_PATH,
    row_to_view,
)
from keyplane.services.context import Context

_LINES_PER_CHUNK = 1000
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


def feed_router(ctx: Context, notifier: ChangeNotifier) -> APIRouter:
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
