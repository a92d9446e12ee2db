"""A fresh gateway's seed download (``FeedFollower._seed``) against a small aiohttp feed serving a
real seed file (``propagation.seed.build_seed``) and the real snapshot rows: a good seed is
adopted whole; one cut mid-way resumes with ``Range``; a wrong digest, an unknown layout or no
seed at all leave the gateway to the row snapshot. No process boundary is under test here (the
end-to-end one is tests/e2e/test_seed_bootstrap.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from keyplane.gateway import sync
from keyplane.gateway.replica import Replica, ReplicaStore
from keyplane.propagation import feed
from keyplane.propagation.seed import Seed, build_seed
from keyplane.propagation.wire import (
    REPLICA_SCHEMA,
    SEED_DIGEST_HEADER,
    SEED_PATH,
    SEED_REVISION_HEADER,
    SEED_SCHEMA_HEADER,
)
from keyplane.services.context import Context
from tests.unit.propagation.test_snapshot_resume import _feed, _follow_until_a_snapshot, _world


async def _rows(ctx: Context, asked: list[str]) -> Any:
    async def snapshot(request: web.Request) -> web.StreamResponse:
        asked.append("rows")
        response = web.StreamResponse()
        await response.prepare(request)
        sent = 0
        for item in feed.snapshot_json(ctx):
            if isinstance(item, int):
                await response.write(f'{{"revision": {item}}}\n'.encode())
            else:
                sent += len(item)
                await response.write(("\n".join(item) + "\n").encode())
        await response.write(f'{{"end": {sent}}}\n'.encode())
        return response

    return snapshot


def _seed_route(
    seed: Seed | None,
    asked: list[dict[str, str]],
    *,
    digest: str | None = None,
    layout: str = str(REPLICA_SCHEMA),
    cut: int | None = None,
    part: Path | None = None,
) -> Any:
    """The seed route: Range with If-Range as the control plane answers it; with ``cut``, the
    first answer stops after that many bytes, once the gateway has stored them in ``part``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        asked.append(dict(request.headers))
        if seed is None:
            raise web.HTTPNotFound()
        data = seed.path.read_bytes()
        start = 0
        if request.headers.get("If-Range") == f'"{seed.sha256}"':
            start = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
        body = data[start:]
        headers = {
            SEED_DIGEST_HEADER: digest or seed.sha256,
            SEED_REVISION_HEADER: str(seed.revision),
            SEED_SCHEMA_HEADER: layout,
            "Content-Length": str(len(body)),
        }
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        response = web.StreamResponse(status=206 if start else 200, headers=headers)
        await response.prepare(request)
        if cut is not None and len(asked) == 1:
            assert part is not None
            await response.write(body[:cut])
            deadline = time.monotonic() + 10
            while not (part.exists() and part.stat().st_size == cut):  # the gateway has them
                assert time.monotonic() < deadline, "the gateway never stored the first bytes"
                await asyncio.sleep(0.01)
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-file
            return response
        await response.write(body)
        return response

    return handler


async def _follow(
    tmp_path: Path, ctx: Context, seed_handler: Any, rows_asked: list[str]
) -> tuple[sync.FeedFollower, Replica, ReplicaStore]:
    app = _feed(ctx, await _rows(ctx, rows_asked))
    app.router.add_get(SEED_PATH, seed_handler)
    store = ReplicaStore(tmp_path / "gw" / "replica.db")
    replica = Replica()
    store.load_into(replica)
    follower = await _follow_until_a_snapshot(app, replica, store)
    return follower, replica, store


def _same_as_the_control_plane(ctx: Context, store: ReplicaStore) -> None:
    lines = list(feed.snapshot_lines(ctx))
    assert store.revision == lines[0]["revision"]
    assert store.views() == {str(v["apiKeyId"]): v for v in lines[1:]}


async def test_a_fresh_gateway_adopts_the_seed_whole(tmp_path: Path) -> None:
    ctx = _world(tmp_path, 6)
    seed = build_seed(ctx, tmp_path / "seed")
    asked: list[dict[str, str]] = []
    rows: list[str] = []
    follower, _, store = await _follow(tmp_path, ctx, _seed_route(seed, asked), rows)
    assert (follower.seeded, rows, len(asked)) == (1, [], 1)
    _same_as_the_control_plane(ctx, store)
    assert not list((tmp_path / "gw").glob("seed-*"))
    store.close()


async def test_a_seed_cut_mid_way_resumes_with_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync, "SEED_WRITE", 1)  # each chunk stored as it comes
    ctx = _world(tmp_path, 8)
    seed = build_seed(ctx, tmp_path / "seed")
    cut = seed.size // 2
    part = tmp_path / "gw" / f"seed-{seed.sha256}.part"
    asked: list[dict[str, str]] = []
    rows: list[str] = []
    handler = _seed_route(seed, asked, cut=cut, part=part)
    follower, _, store = await _follow(tmp_path, ctx, handler, rows)
    assert (follower.seeded, rows, len(asked)) == (1, [], 2)
    assert "Range" not in asked[0]
    assert asked[1]["Range"] == f"bytes={cut}-"
    assert asked[1]["If-Range"] == f'"{seed.sha256}"'
    assert follower.timings["resumed_at"] == cut
    _same_as_the_control_plane(ctx, store)
    store.close()


@pytest.mark.parametrize(
    ("flaw", "event"),
    [
        ({"digest": "0" * 64}, "seed_digest_mismatch"),
        ({"layout": str(REPLICA_SCHEMA + 1)}, "seed_layout_unknown"),
        ({"no_seed": True}, "seed_not_ready"),
    ],
)
async def test_a_bad_or_missing_seed_leaves_the_gateway_to_the_rows(
    tmp_path: Path, flaw: dict[str, Any], event: str
) -> None:
    ctx = _world(tmp_path, 5)
    seed = None if flaw.pop("no_seed", False) else build_seed(ctx, tmp_path / "seed")
    asked: list[dict[str, str]] = []
    rows: list[str] = []
    with capture_logs() as logs:
        follower, _, store = await _follow(tmp_path, ctx, _seed_route(seed, asked, **flaw), rows)
    assert (follower.seeded, follower.snapshots, rows, len(asked)) == (0, 1, ["rows"], 1)
    assert event in [entry["event"] for entry in logs]
    _same_as_the_control_plane(ctx, store)
    assert not list((tmp_path / "gw").glob("seed-*"))  # a bad file is not kept
    store.close()
