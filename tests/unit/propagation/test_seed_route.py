"""The seed route (``GET /internal/v1/seed``), in process: only a gateway's credential gets it;
404 until a seed is ready; the file whole with its digest, revision and layout; ``Range`` with a
matching ``If-Range`` resumes it (206), anything else sends it whole. And the keeper's sweep of
the files left by keepers gone."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from keyplane.control import errors as control_errors
from keyplane.propagation import feed
from keyplane.propagation.notifier import ChangeNotifier
from keyplane.propagation.routes import feed_router
from keyplane.propagation.seed import BUILD_TIMEOUT, ChildBuild, SeedKeeper
from keyplane.propagation.wire import (
    GATEWAY_HEADER,
    REPLICA_SCHEMA,
    SEED_DIGEST_HEADER,
    SEED_PATH,
    SEED_REVISION_HEADER,
    SEED_SCHEMA_HEADER,
)
from keyplane.services.context import Context
from keyplane.storage.db import Database
from tests.unit.propagation.test_propagation_status import US, World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.db.dispose()


@pytest.fixture
def keeper(world: World, tmp_path: Path) -> Iterator[SeedKeeper]:
    made = SeedKeeper(world.ctx, tmp_path / "seed", in_child=False)
    yield made
    made.close()


@pytest.fixture
def http(world: World, keeper: SeedKeeper) -> Iterator[TestClient]:
    app = FastAPI()
    control_errors.install(app)
    app.include_router(feed_router(world.ctx, ChangeNotifier(), keeper))
    credential = feed.issue_credential(world.ctx, cluster=US)
    with TestClient(app) as client:
        client.headers.update({"Authorization": f"Bearer {credential}", GATEWAY_HEADER: "us-a"})
        yield client


def test_only_a_gateway_credential_gets_the_seed(http: TestClient, keeper: SeedKeeper) -> None:
    keeper.build()
    assert TestClient(http.app).get(SEED_PATH).status_code == 401
    answer = http.get(SEED_PATH, headers={"Authorization": "Bearer kpgw-" + "a" * 60})
    assert answer.status_code == 401


def test_no_seed_ready_is_a_404(http: TestClient) -> None:
    answer = http.get(SEED_PATH)
    assert answer.status_code == 404, answer.text


def test_the_seed_whole_and_resumed(world: World, http: TestClient, keeper: SeedKeeper) -> None:
    world.create()
    seed = keeper.build()
    data = seed.path.read_bytes()
    whole = http.get(SEED_PATH)
    assert whole.status_code == 200
    assert whole.content == data
    assert whole.headers[SEED_DIGEST_HEADER] == seed.sha256
    assert whole.headers[SEED_REVISION_HEADER] == str(seed.revision)
    assert whole.headers[SEED_SCHEMA_HEADER] == str(REPLICA_SCHEMA)
    assert whole.headers["content-length"] == str(len(data))
    etag = whole.headers["etag"]
    assert etag == f'"{seed.sha256}"'

    rest = http.get(SEED_PATH, headers={"Range": "bytes=100-", "If-Range": etag})
    assert rest.status_code == 206
    assert rest.content == data[100:]
    assert rest.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    assert rest.headers["content-length"] == str(len(data) - 100)

    for headers in (
        {"Range": "bytes=100-", "If-Range": '"another file"'},  # the file changed: whole
        {"Range": "bytes=100-"},  # no If-Range: not resumed
        {"Range": "bytes=0-99", "If-Range": etag},  # a form gateways do not ask for
        {"Range": f"bytes={len(data)}-", "If-Range": etag},  # nothing left: whole again
    ):
        answer = http.get(SEED_PATH, headers=headers)
        assert answer.status_code == 200, headers
        assert answer.content == data, headers


def test_a_seed_the_log_no_longer_reaches_is_a_404(
    world: World, http: TestClient, keeper: SeedKeeper
) -> None:
    world.create()
    keeper.build()
    world.create()
    world.create()
    feed.compact(world.ctx, keep=1)
    assert http.get(SEED_PATH).status_code == 404


def test_a_build_sweeps_what_no_live_keeper_holds(
    world: World, keeper: SeedKeeper, tmp_path: Path
) -> None:
    """A restarted control plane's old seed (and a half-built file) goes; a seed another live
    keeper sharing the directory serves stays, however old."""
    world.create()
    other = SeedKeeper(world.ctx, tmp_path / "seed", in_child=False)
    served = other.build().path
    stale = [tmp_path / "seed" / "seed-1-0123456789abcdef.db", tmp_path / "seed" / "seed-x.tmp"]
    long_ago = time.time() - BUILD_TIMEOUT - 60
    for path in stale:
        path.write_bytes(b"left by a process gone")
    for path in (*stale, served):
        os.utime(path, (long_ago, long_ago))
    world.create()
    mine = keeper.build().path
    assert not any(path.exists() for path in stale)
    assert served.exists()
    assert mine.exists()
    other.close()


def test_a_restarted_keeper_serves_the_seed_it_left(
    world: World, keeper: SeedKeeper, tmp_path: Path
) -> None:
    """A control plane that restarts serves the seed already built (checked against its name's
    digest), and builds again only when that one is due; a damaged file is not served."""
    world.create()
    built = keeper.build()
    keeper.close()  # the process stops
    again = SeedKeeper(world.ctx, tmp_path / "seed", in_child=False)
    reused = again.reuse()
    assert reused is not None
    assert (reused.path, reused.revision, reused.sha256, reused.size, reused.keys) == (
        built.path,
        built.revision,
        built.sha256,
        built.size,
        built.keys,
    )
    assert again.current == reused
    assert not again.due()
    again.close()
    with built.path.open("r+b") as file:
        file.seek(built.size // 2)
        file.write(b"\xff")
    damaged = SeedKeeper(world.ctx, tmp_path / "seed", in_child=False)
    assert damaged.reuse() is None
    assert damaged.due()
    damaged.close()


def test_a_failed_child_build_says_why(tmp_path: Path) -> None:
    """The builder process reports its error on its stdout; nothing half-built is left."""
    db = Database(f"sqlite:///{tmp_path / 'no-tables.db'}", pool_size=1)
    try:
        ctx = Context(db=db, server_secret=secrets.token_bytes(32))
        with pytest.raises(RuntimeError, match=r"the seed build failed \(1\): Unavailable"):
            ChildBuild()(ctx, tmp_path / "seed")
    finally:
        db.dispose()
    assert not list((tmp_path / "seed").glob("seed-*"))
