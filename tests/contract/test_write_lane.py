"""Writes off the event loop (``Context.writing``) on every engine, and SQLite's write lane: one
thread, several writes to a commit, each acknowledged only once the commit holding it is done."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.exc import IntegrityError

from keyplane.services import admin, keys
from keyplane.services.auth import Principal
from keyplane.services.context import Context
from keyplane.storage import tables
from keyplane.storage.db import Database, WriteLane


def test_concurrent_writes_off_the_loop_commit_gap_free_and_wake_the_feed_after(
    ctx: Context,
) -> None:
    team = admin.create_team(ctx, name="team")
    p = Principal(admin.create_management_key(ctx, team_id=team.team_id, name="m").key)
    woken: list[int] = []
    ctx = Context(db=ctx.db, server_secret=ctx.server_secret, on_commit=woken.append)

    def create(i: int) -> int:
        spec = keys.parse_new_key({"name": f"k{i}"})
        made, _ = keys.create_key(ctx, principal=p, team_id=team.team_id, spec=spec)
        assert made is not None
        return made.key.revision

    async def main() -> list[int]:
        return await asyncio.gather(*(ctx.writing(partial(create, i)) for i in range(40)))

    revisions = asyncio.run(main())
    assert sorted(revisions) == list(range(1, 41))
    assert max(woken) == 40
    with ctx.db.read() as conn:
        stored = conn.execute(select(tables.change_log.c.revision)).scalars().all()
    assert sorted(stored) == list(range(1, 41))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'keyplane.db'}")
    database.migrate()
    yield database
    database.dispose()


def _put(db: Database, name: str, *, fail: bool = False) -> str:
    with db.write() as conn:
        conn.execute(insert(tables.meta).values(name=name, value="v"))
        if fail:
            raise RuntimeError(f"{name} failed")
    return name


def _names(db: Database) -> set[str]:
    with db.read() as conn:
        return set(conn.execute(select(tables.meta.c.name)).scalars())


def _acknowledged(events: list[str], what: str, _future: object) -> None:
    events.append(what)


def _queued_behind_a_blocker(
    db: Database, jobs: Sequence[Callable[[], Any]]
) -> tuple[list[Any], list[str]]:
    """Run ``jobs`` on the lane while a first write holds it, so they queue and go as one batch;
    their outcomes (result or exception) and, in order, the commits and acknowledgements."""
    lane = db.write_lane
    assert lane is not None
    events: list[str] = []
    started, release = threading.Event(), threading.Event()
    event.listen(db.writer, "commit", lambda _conn: events.append("commit"))

    def blocker_job() -> bool:
        started.set()
        return release.wait(10)

    blocker = lane.submit(blocker_job)
    assert started.wait(10)  # its batch is taken: what comes next queues for the next one
    futures = [lane.submit(job) for job in jobs]
    for i, future in enumerate(futures):
        future.add_done_callback(partial(_acknowledged, events, f"ack {i}"))
    release.set()
    assert blocker.result(timeout=10)
    outcomes = [f.result() if f.exception(timeout=10) is None else f.exception() for f in futures]
    return outcomes, events


def test_writes_queued_on_the_lane_share_one_commit_and_are_acknowledged_after_it(
    db: Database,
) -> None:
    committed: list[str] = []

    def job(i: int) -> str:
        name = _put(db, f"n{i}")
        db.after_commit(lambda: committed.append(name))
        return name

    outcomes, events = _queued_behind_a_blocker(db, [partial(job, i) for i in range(10)])
    assert outcomes == [f"n{i}" for i in range(10)]
    assert events[0] == "commit"  # the one commit of all ten, before any is acknowledged
    assert sorted(events[1:]) == sorted(f"ack {i}" for i in range(10))
    assert committed == [f"n{i}" for i in range(10)]
    assert _names(db) >= {f"n{i}" for i in range(10)}


def test_a_write_that_raises_in_a_batch_is_rolled_back_alone(db: Database) -> None:
    jobs = [partial(_put, db, f"n{i}", fail=i == 2) for i in range(5)]
    outcomes, _ = _queued_behind_a_blocker(db, jobs)
    assert isinstance(outcomes[2], RuntimeError)
    assert [o for i, o in enumerate(outcomes) if i != 2] == ["n0", "n1", "n3", "n4"]
    names = _names(db)
    assert "n2" not in names
    assert {"n0", "n1", "n3", "n4"} <= names


def test_a_batch_whose_commit_fails_fails_every_write_in_it(db: Database) -> None:
    def breaks_the_commit() -> str:
        with db.write() as conn:
            # A foreign key checked at COMMIT, pointing nowhere: the batch's commit fails.
            conn.exec_driver_sql("PRAGMA defer_foreign_keys=ON")
            conn.execute(
                insert(tables.management_keys).values(
                    key_id="m", team_id="no such team", name="m", digest=secrets.token_hex(8),
                    redacted="r", owner_user_id="u", acls="[]", create_time=0, modify_time=0,
                )
            )  # fmt: skip
        return "broken"

    outcomes, _ = _queued_behind_a_blocker(
        db, [partial(_put, db, "a"), breaks_the_commit, partial(_put, db, "b")]
    )
    assert all(isinstance(o, IntegrityError) for o in outcomes), outcomes
    assert not {"a", "b"} & _names(db)
    assert _put(db, "after") == "after"  # the writer connection is usable again
    assert "after" in _names(db)


def test_a_lone_write_runs_in_its_own_transaction(db: Database) -> None:
    lane = db.write_lane
    assert lane is not None
    assert lane.submit(_put, db, "alone").result(timeout=10) == "alone"
    with pytest.raises(RuntimeError):
        lane.submit(_put, db, "fails", fail=True).result(timeout=10)
    assert "alone" in _names(db)
    assert "fails" not in _names(db)


def test_writes_awaited_on_a_loop_get_their_own_outcomes_after_the_commit(db: Database) -> None:
    lane = db.write_lane
    assert isinstance(lane, WriteLane)
    commits: list[str] = []
    event.listen(db.writer, "commit", lambda _conn: commits.append("commit"))

    async def main() -> list[Any]:
        runs = [lane.run(partial(_put, db, f"a{i}", fail=i == 3)) for i in range(8)]
        return await asyncio.gather(*runs, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert isinstance(outcomes[3], RuntimeError)
    assert [o for i, o in enumerate(outcomes) if i != 3] == [f"a{i}" for i in range(8) if i != 3]
    names = _names(db)
    assert "a3" not in names
    assert {f"a{i}" for i in range(8) if i != 3} <= names
    assert 1 <= len(commits) <= 8


def test_a_write_whose_awaiter_is_cancelled_before_it_starts_is_not_run(db: Database) -> None:
    lane = db.write_lane
    assert isinstance(lane, WriteLane)
    started, release = threading.Event(), threading.Event()

    def blocker_job() -> bool:
        started.set()
        return release.wait(10)

    async def main() -> None:
        blocker = lane.run(blocker_job)
        assert await asyncio.to_thread(started.wait, 10)
        queued = lane.run(partial(_put, db, "cancelled"))
        queued.cancel()
        after = lane.run(partial(_put, db, "after"))
        release.set()
        assert await blocker
        assert await after == "after"
        assert queued.cancelled()

    asyncio.run(main())
    assert "cancelled" not in _names(db)


def test_a_write_holds_the_write_lock_from_its_begin_and_a_read_is_one_transaction(
    db: Database, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "keyplane.db", timeout=0, isolation_level=None)
    try:
        with db.write() as conn:
            conn.execute(select(tables.meta.c.name)).all()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        with db.read() as conn:
            assert conn.connection.driver_connection.in_transaction  # type: ignore[union-attr]
    finally:
        other.close()
