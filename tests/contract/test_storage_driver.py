"""``keyplane.storage.driver.insert``: on SQLite the driver's cursor runs the INSERT, and what is
stored, and what a refused row raises, are what ``Connection.execute`` stores and raises."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, StatementError

from keyplane.storage import driver
from keyplane.storage.db import HERE_BUSY_TIMEOUT_MS, Database

_meta = MetaData()
_rows = Table(
    "driver_rows",
    _meta,
    Column("id", String(8), primary_key=True),
    Column("n", Integer),
    Column("flag", Boolean, nullable=False),
)
_defaulted = Table(
    "driver_defaulted",
    _meta,
    Column("id", String(8), primary_key=True),
    Column("flag", Boolean, nullable=False, default=False),
)
_INSERT = insert(_rows)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'driver.db'}")
    _meta.create_all(database.writer)
    yield database
    database.dispose()


def _stored(db: Database, table: Table) -> list[tuple[Any, ...]]:
    with db.read() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(table.c.id))]


def test_rows_go_through_the_driver_as_execute_would_store_them(db: Database) -> None:
    with db.write() as conn:
        driver.insert(conn, _INSERT, {"id": "a", "n": 1, "flag": True})
        driver.insert(
            conn,
            _INSERT,
            [{"id": "b", "n": None, "flag": False}, {"id": "c", "n": 3, "flag": True}],
        )
        driver.insert(conn, _INSERT, {"flag": False, "id": "d"})  # other columns, other order
        conn.execute(_INSERT, {"id": "e", "n": 5, "flag": True})
    assert _stored(db, _rows) == [
        ("a", 1, True), ("b", None, False), ("c", 3, True), ("d", None, False), ("e", 5, True)
    ]  # fmt: skip
    assert (_INSERT, ("id", "n", "flag")) in driver._plans  # the driver's path was taken


def test_a_column_default_to_fill_in_goes_through_sqlalchemy(db: Database) -> None:
    with db.write() as conn:
        driver.insert(conn, insert(_defaulted), {"id": "a"})
    assert _stored(db, _defaulted) == [("a", False)]


def test_a_refused_row_raises_what_sqlalchemy_raises_and_its_write_stores_nothing(
    db: Database,
) -> None:
    with db.write() as conn:
        driver.insert(conn, _INSERT, {"id": "a", "n": 1, "flag": True})

    def refused() -> None:
        with db.write() as conn:
            driver.insert(conn, _INSERT, {"id": "b", "n": 2, "flag": True})
            rows = [{"id": "c", "n": 3, "flag": True}, {"id": "a", "n": 9, "flag": False}]
            driver.insert(conn, _INSERT, rows)

    with pytest.raises(IntegrityError):
        refused()
    assert _stored(db, _rows) == [("a", 1, True)]


_BY_ID = select(_rows).where(_rows.c.id == bindparam("id"))
_BUMP = (
    update(_rows).where(_rows.c.id == bindparam("key")).values(n=_rows.c.n + 1).returning(_rows.c.n)
)


def test_a_row_read_by_the_driver_is_the_row_sqlalchemy_reads(db: Database) -> None:
    with db.write() as conn:
        driver.insert(
            conn,
            _INSERT,
            [{"id": "a", "n": 1, "flag": True}, {"id": "b", "n": None, "flag": False}],
        )
    with db.read() as conn:
        for key in ("a", "b", "none"):
            ours = driver.first(conn, _BY_ID, {"id": key})
            theirs = conn.execute(_BY_ID, {"id": key}).first()
            assert ours == (None if theirs is None else tuple(theirs))
            if ours is not None:
                assert theirs is not None
                assert (ours.id, ours.n, ours.flag) == (theirs.id, theirs.n, theirs.flag)
                assert type(ours.flag) is bool
        assert driver._reads.get(_BY_ID) is not None
        # An IN list is expanded at execution: SQLAlchemy's path.
        within = select(_rows.c.id).where(_rows.c.id.in_(["a", "b"])).order_by(_rows.c.id)
        assert tuple(driver.first(conn, within, {})) == ("a",)
        assert driver._reads[within] is None


def test_an_update_returning_runs_by_the_driver_with_the_literals_it_holds(db: Database) -> None:
    with db.write() as conn:
        driver.insert(conn, _INSERT, {"id": "a", "n": 1, "flag": True})
        assert driver.first(conn, _BUMP, {"key": "a"}).n == 2
        assert conn.execute(_BUMP, {"key": "a"}).scalar_one() == 3
        assert driver.first(conn, _BUMP, {"key": "a"}).n == 4
        assert driver.first(conn, _BUMP, {"key": "none"}) is None
    assert _stored(db, _rows) == [("a", 4, True)]
    with pytest.raises(StatementError), db.read() as conn:
        driver.first(conn, _BY_ID, {})  # a parameter missing: SQLAlchemy's error


def test_a_read_here_is_a_snapshot_and_the_next_one_sees_what_committed_since(
    db: Database,
) -> None:
    """``read_here``: one connection of the thread's own, the driver's BEGIN … ROLLBACK; inside,
    a statement SQLAlchemy runs (``execute``) shares the snapshot, and nothing stays open."""
    by_id = select(_rows.c.n).where(_rows.c.id == bindparam("id"))
    with db.write() as conn:
        driver.insert(conn, _INSERT, {"id": "a", "n": 1, "flag": True})
    for n in (1, 2, 3):
        with db.read_here() as conn:
            assert not conn.in_transaction()
            assert driver.first(conn, by_id, {"id": "a"}) == (n,)
            with db.write() as writing:  # committed by another connection meanwhile
                writing.execute(update(_rows).values(n=_rows.c.n + 1))
            assert driver.first(conn, by_id, {"id": "a"}) == (n,)
            assert conn.execute(by_id, {"id": "a"}).scalar_one() == n


def test_a_one_statement_read_here_sees_each_commit_and_leaves_nothing_open(
    db: Database,
) -> None:
    """``read_here(one_statement=True)`` (authentication's read): no BEGIN, so its one statement
    is its own snapshot, taken when it runs; afterwards the thread's connection holds no
    transaction (a writer's commit is never held up, the next read sees it)."""
    by_id = select(_rows.c.n).where(_rows.c.id == bindparam("id"))
    with db.write() as conn:
        driver.insert(conn, _INSERT, {"id": "a", "n": 1, "flag": True})
    for n in (1, 2, 3):
        with db.read_here(one_statement=True) as conn:
            with db.write() as writing:  # committed by another connection before the read
                writing.execute(update(_rows).values(n=_rows.c.n + 1))
            assert driver.first(conn, by_id, {"id": "a"}) == (n + 1,)
            raw = conn.connection.driver_connection
        assert raw is not None
        assert not raw.in_transaction
        assert not conn.in_transaction()


def test_a_read_on_the_event_loop_waits_for_a_lock_only_briefly(db: Database) -> None:
    """``read_here`` runs on the event loop: under a lock SQLite holds against readers (in WAL an
    index being recovered, or another process's exclusive locking mode) it is ``Unavailable``
    after ``HERE_BUSY_TIMEOUT_MS``, where a thread's reader waits out its 10 s busy timeout."""
    with db.read_here() as conn:
        here = conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one()
    with db.read() as conn:
        pooled = conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one()
    assert (here, pooled) == (HERE_BUSY_TIMEOUT_MS, 10_000)
    assert HERE_BUSY_TIMEOUT_MS <= 100
