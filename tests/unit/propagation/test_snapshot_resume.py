"""A snapshot whose connection drops mid-way is resumed after the last key the gateway stored, not
started over; the replica then equals the control plane's view. The feed here is a small aiohttp
server over the real snapshot code and a real store (no process boundary is under test)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from keyplane.gateway import sync
from keyplane.gateway.replica import Replica, ReplicaStore
from keyplane.propagation import feed
from keyplane.propagation.wire import CHANGES_PATH, SNAPSHOT_PATH
from keyplane.services import admin, keys
from keyplane.services.auth import Principal
from keyplane.services.context import Context
from keyplane.storage.db import Database

_encode = msgspec.json.Encoder().encode


def _world(root: Path, count: int) -> Context:
    db = Database(f"sqlite:///{root / 'cp.db'}", pool_size=2)
    db.migrate()
    ctx = Context(db=db, server_secret=secrets.token_bytes(32))
    team = admin.create_team(ctx, name="t")
    principal = Principal(admin.create_management_key(ctx, team_id=team.team_id, name="m").key)
    for i in range(count):
        keys.create_key(
            ctx,
            principal=principal,
            team_id=team.team_id,
            spec=keys.parse_new_key({"name": f"k{i}", "qps": i}),
        )
    return ctx


def _feed(ctx: Context, snapshot: Any) -> web.Application:
    """A feed whose snapshot is ``snapshot`` and whose changes say nothing changed."""

    async def changes(request: web.Request) -> web.Response:
        current = feed.current_revision(ctx)
        return web.json_response({"revision": current, "changes": [], "snapshotRequired": False})

    app = web.Application()
    app.router.add_get(SNAPSHOT_PATH, snapshot)
    app.router.add_get(CHANGES_PATH, changes)
    return app


async def _follow_until_a_snapshot(
    app: web.Application, replica: Replica, store: ReplicaStore
) -> sync.FeedFollower:
    """A follower of ``app``'s feed, run until it has applied a snapshot (20 s at most)."""
    async with TestServer(app, host="127.0.0.1") as server:
        follower = sync.FeedFollower(
            control_urls=[str(server.make_url(""))],
            credential="kpgw-test",
            gateway_id="gw",
            replica=replica,
            store=store,
            poll_wait=0.1,
        )
        task = asyncio.create_task(follower.run())
        try:
            async with asyncio.timeout(20):
                while follower.snapshots == 0:
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return follower


async def test_a_snapshot_cut_short_resumes_after_the_last_key_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = _world(tmp_path, 12)
    asked: list[str | None] = []

    async def snapshot(request: web.Request) -> web.StreamResponse:
        after = request.query.get("after")
        asked.append(after)
        response = web.StreamResponse()
        await response.prepare(request)
        sent = 0
        for item in feed.snapshot_rows(ctx, after=after):
            if isinstance(item, int):
                await response.write(_encode({"revision": item}) + b"\n")
                continue
            item[14] = msgspec.Raw(item[14].encode())
            await response.write(_encode(item) + b"\n")
            sent += 1
            if len(asked) == 1 and sent == 5:
                await asyncio.sleep(0.2)  # let the five rows reach the gateway first
                assert request.transport is not None
                request.transport.close()  # the connection drops mid-snapshot
                return response
        await response.write(_encode({"end": sent}) + b"\n")
        return response

    app = _feed(ctx, snapshot)
    monkeypatch.setattr(sync, "SNAPSHOT_CHUNK", 2)
    store = ReplicaStore(tmp_path / "replica.db")
    replica = Replica()
    store.load_into(replica)
    await _follow_until_a_snapshot(app, replica, store)
    lines = list(feed.snapshot_lines(ctx))
    assert len(asked) == 2
    assert asked[0] is None
    assert asked[1] == sorted(str(v["apiKeyId"]) for v in lines[1:])[4]  # after the fifth key
    assert replica.revision == lines[0]["revision"]
    assert replica.views() == {str(v["apiKeyId"]): v for v in lines[1:]}
    store.close()
    ctx.db.dispose()


@pytest.mark.parametrize(
    "wrong",
    [
        b'{"apiKeyId":"k1","secrets":[]}\n',  # a view: the control plane ignored format=rows
        b"not json\n",
    ],
)
async def test_a_snapshot_line_the_gateway_does_not_recognise_fails_loudly_and_is_retried(
    tmp_path: Path, wrong: bytes
) -> None:
    """Never an empty snapshot applied in silence: the transfer fails (logged as an error) and
    the next try, answered properly, is applied."""
    ctx = _world(tmp_path, 3)
    asked: list[str | None] = []

    async def snapshot(request: web.Request) -> web.StreamResponse:
        asked.append(request.query.get("format"))
        response = web.StreamResponse()
        await response.prepare(request)
        sent = 0
        for item in feed.snapshot_rows(ctx):
            if isinstance(item, int):
                await response.write(_encode({"revision": item}) + b"\n")
                if len(asked) == 1:
                    await response.write(wrong)
                continue
            item[14] = msgspec.Raw(item[14].encode())
            await response.write(_encode(item) + b"\n")
            sent += 1
        await response.write(_encode({"end": sent}) + b"\n")
        return response

    app = _feed(ctx, snapshot)
    store = ReplicaStore(tmp_path / "replica.db")
    replica = Replica()
    store.load_into(replica)
    with capture_logs() as logged:
        follower = await _follow_until_a_snapshot(app, replica, store)
    lines = list(feed.snapshot_lines(ctx))
    assert asked == ["rows", "rows"]
    assert follower.snapshots == 1
    errors = [e for e in logged if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["snapshot_line_unrecognised"]
    assert errors[0]["length"] == len(wrong) - 1
    assert replica.views() == {str(v["apiKeyId"]): v for v in lines[1:]}
    assert len(lines) == 4
    store.close()
    ctx.db.dispose()
