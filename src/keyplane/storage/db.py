"""Engines, migrations and transactions. The only module that knows which database engine runs.

Two engines on one database: a writer whose transactions take the write lock up front
(``BEGIN IMMEDIATE`` on SQLite, so a writer never fails half-way on a busy lock), and a reader
pool. Schema changes are Alembic migrations, run on start.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, delete, event, insert, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import ConnectionPoolEntry, SingletonThreadPool

from keyplane.domain.errors import Unavailable
from keyplane.private_files import private_file
from keyplane.storage import driver, tables

log = structlog.get_logger("keyplane.storage")
_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x6B6579706C616E  # "keyplan": any constant shared by every replica


def normalize_url(url: str) -> URL:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy's default would be psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


#: How long a read on the event loop (``read_here``) waits for a lock SQLite holds against it (in
#: WAL only while recovering its index, or under another process's exclusive lock) before it is
#: ``Unavailable``: the loop must not stall for the 10 s the threads' connections wait.
HERE_BUSY_TIMEOUT_MS = 100


def _sqlite_pragmas(synchronous: str, busy_timeout_ms: int = 10_000) -> Any:
    def on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take over transaction control from pysqlite, so BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    return on_connect


@contextmanager
def _unavailable_store() -> Iterator[None]:
    """A store that cannot be reached (PostgreSQL down or restarting, a connection dropped, SQLite
    busy past its timeout) is ``Unavailable``: a 503 that clients retry, not an internal error.
    The transaction is rolled back first, so nothing of it is half-applied."""
    try:
        yield
    except OperationalError as error:
        log.warning("store_unavailable", error=str(error.orig).strip().splitlines()[0][:200])
        raise Unavailable("The store is unavailable; retry shortly.") from error


class Database:
    """Both engines of one database, with ``write()`` and ``read()`` transactions."""

    def __init__(self, url: str, *, pool_size: int = 8, sqlite_synchronous: str = "NORMAL") -> None:
        """``sqlite_synchronous``: in WAL mode NORMAL keeps every commit through a crash of the
        process; only an OS crash or power loss can drop the last ones. FULL survives those too,
        at an fsync per commit (about 5 ms on this project's test machines)."""
        if sqlite_synchronous not in ("NORMAL", "FULL"):
            raise ValueError("sqlite_synchronous is NORMAL or FULL")
        self.url = normalize_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            database = self.url.database
            if database and database != ":memory:":
                # 0600 before SQLite opens it: its WAL and shared-memory files take its mode.
                private_file(Path(database))
            # One writer connection: in-process writers queue on the pool instead of spinning
            # on SQLite's busy handler.
            self.writer = create_engine(self.url, pool_size=1, max_overflow=0, pool_timeout=30)
            # The thread the server's writes run in, several to a commit (``WriteLane``).
            self.write_lane: Executor | None = WriteLane(self)
            self.reader = create_engine(self.url, pool_size=pool_size, max_overflow=0)
            # A connection of the calling thread's own (``read_here``): an event loop's point
            # reads never wait for a pooled connection, and in WAL never for the writer.
            self.here_reader: Engine | None = create_engine(
                self.url, poolclass=SingletonThreadPool, pool_size=4
            )
            self._here = threading.local()
            # ``read_here`` emits its own BEGIN: a statement SQLAlchemy runs inside it begins
            # nothing more (the dialect's begin is "").
            engines = (
                (self.writer, "BEGIN IMMEDIATE", 10_000),
                (self.reader, "BEGIN", 10_000),
                (self.here_reader, "", HERE_BUSY_TIMEOUT_MS),
            )
            for engine, begin, busy in engines:
                event.listen(engine, "connect", _sqlite_pragmas(sqlite_synchronous, busy))
                # The dialect's own begin, not a "begin" event: an engine with connection events
                # joins two dispatchers on every connection and builds a listener per event
                # fired (~4 % of a create's CPU, on the reader and the writer alike).
                setattr(engine.dialect, "do_begin", _make_begin(begin))  # noqa: B010
        else:
            self.here_reader = None  # a read may wait on the server: in a thread, off the loop
            self.write_lane = None  # writers in parallel: the event loop's default threads
            # Writers in READ COMMITTED: the revision counter's row lock orders them. Readers in
            # REPEATABLE READ: a snapshot and its revision come from one consistent view.
            self.writer = create_engine(
                self.url, pool_size=pool_size, max_overflow=4, pool_pre_ping=True
            )
            self.reader = create_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=4,
                pool_pre_ping=True,
                isolation_level="REPEATABLE READ",
            )

    def migrate(self) -> None:
        """Bring the schema to the newest migration."""
        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        with self.writer.begin() as conn:
            if not self.is_sqlite:
                # Replicas starting together migrate one at a time (SQLite: BEGIN IMMEDIATE).
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def check_secret(self, current: str, accepted: Sequence[str]) -> bool:
        """Record ``current``, a fingerprint of the deployment secret (never the secret), unless
        the one recorded is in ``accepted``. False: the database was set up under another secret
        (replicas disagree, or the secret file was lost) — refuse to start rather than fail
        every sealed answer and token."""
        name = tables.meta.c.name
        with self.write() as conn:
            found = conn.execute(
                select(tables.meta.c.value).where(name == "secret_fingerprint")
            ).scalar_one_or_none()
            if found is not None and found not in accepted:
                return False
            if found != current:
                conn.execute(delete(tables.meta).where(name == "secret_fingerprint"))
                conn.execute(insert(tables.meta).values(name="secret_fingerprint", value=current))
        return True

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; in a batch of the ``WriteLane`` (on its thread), a savepoint of
        the batch's transaction instead, committed with the batch."""
        batch = _batch.conn
        if batch is not None:
            # Plain SAVEPOINT statements: SQLAlchemy's begin_nested() cost more (~220 us here)
            # than a whole BEGIN IMMEDIATE ... COMMIT (~175 us), undoing what the batch saves.
            # By the driver (keyplane.storage.driver): the pair costs ~3.5 us there, ~16 us
            # through SQLAlchemy's exec_driver_sql.
            with _unavailable_store():
                driver.statement(batch, "SAVEPOINT lane")
                try:
                    yield batch
                except BaseException:
                    driver.statement(batch, "ROLLBACK TO lane")
                    driver.statement(batch, "RELEASE lane")
                    raise
                driver.statement(batch, "RELEASE lane")
            return
        with _unavailable_store(), self.writer.begin() as conn:
            yield conn

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the write transaction just ended has committed: now, or, in a
        ``WriteLane`` batch, when the batch has."""
        if _batch.after is None:
            callback()
        else:
            _batch.after.append(callback)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with _unavailable_store(), self.reader.begin() as conn:
            yield conn

    @contextmanager
    def read_here(self, *, one_statement: bool = False) -> Iterator[Connection]:
        """``read()`` on a connection of the calling thread's own (SQLite only, ``here_reader``):
        for a short read on the event loop, which must not wait for a pooled connection. The
        connection stays the thread's, and the transaction is the driver's ``BEGIN`` …
        ``ROLLBACK`` (SQLAlchemy's checkout, ``Transaction`` and reset were ~60 % of a one-row
        read's CPU); SQLAlchemy's own state is rolled back too if a statement it ran began it.
        ``one_statement``: the block runs a single statement, which SQLite runs in a read
        transaction of its own (one snapshot), so no ``BEGIN`` … ``ROLLBACK`` around it."""
        assert self.here_reader is not None, "read_here is for SQLite"
        conn: Connection | None = getattr(self._here, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self._here.conn = self.here_reader.connect()
        with _unavailable_store():
            if not one_statement:
                driver.statement(conn, "BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction():
                    conn.rollback()
                raw = conn.connection.driver_connection
                assert raw is not None
                raw.rollback()  # pysqlite: with no transaction open, nothing

    def dispose(self) -> None:
        if self.write_lane is not None:
            self.write_lane.shutdown(wait=True)
        self.writer.dispose()
        if self.reader is not self.writer:
            self.reader.dispose()
        if self.here_reader is not None:
            self.here_reader.dispose()


T = TypeVar("T")


class _Awaited:
    """Where the outcome of a write awaited on an event loop goes (``WriteLane.run``): the
    loop's own future, settled on the loop, without a ``concurrent.futures.Future`` between."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
        self.loop = loop
        self.future = future

    def set_running_or_notify_cancel(self) -> bool:
        # An awaiter cancelled before its write starts gets no write, as a cancelled Future.
        return not self.future.cancelled()


_Job = tuple["Future[Any] | _Awaited", Callable[[], Any]]


class _Batch(threading.local):
    """The ``WriteLane`` batch running on this thread: its connection and what waits for its
    commit (none on every other thread)."""

    conn: Connection | None = None
    after: list[Callable[[], None]] | None = None


_batch = _Batch()


class WriteLane(Executor):
    """The one thread a SQLite database's writes are submitted to, with group commit.

    SQLite has one writer at a time (one writer connection here). Writes queued in worker threads
    would each wake in turn as the connection comes free; here they queue for one thread, which
    takes every write waiting (up to ``max_batch``) and runs them in one transaction, each in a
    savepoint of its own (``Database.write`` inside a batch): a write that raises is rolled back
    alone and gets its exception. The batch commits once, and only then is each result delivered
    (each write acknowledged) and each ``after_commit`` callback called; a batch whose commit
    fails fails every write in it. A write that finds no other waiting runs alone, in a
    transaction of its own. Durability is the transaction's, as before: nothing is acknowledged
    before the commit that holds it."""

    def __init__(self, db: Database, *, max_batch: int = 64) -> None:
        self._db = db
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._put((future, partial(fn, *args, **kwargs)))
        return future

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """``fn()`` on the lane, as a future of the running loop: what ``asyncio.wrap_future(
        submit(fn))`` gives, less the thread-safe future between the two (its locks and
        callbacks) and with one loop wake-up per batch instead of one per write."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put((_Awaited(loop, future), fn))
        return future

    def _put(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the write lane is shut down")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="keyplane-writer", daemon=True
                )
                self._thread.start()
            self._jobs.put(job)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
            self._jobs.put(None)
        if wait and thread is not None:
            thread.join()

    def _serve(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch, last = [first], False
            while len(batch) < self._max_batch:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    last = True
                    break
                batch.append(job)
            batch = [(f, fn) for f, fn in batch if f.set_running_or_notify_cancel()]
            if len(batch) == 1:
                _deliver([(batch[0][0], *_outcome(batch[0][1]))])
            elif batch:
                self._together(batch)
            if last:
                return

    def _together(self, batch: list[_Job]) -> None:
        done: list[tuple[bool, Any]] = []
        after: list[Callable[[], None]] = []
        try:
            with self._db.write() as conn:
                _batch.conn, _batch.after = conn, after
                try:
                    for _future, fn in batch:
                        try:
                            done.append((True, fn()))
                        except Exception as error:
                            done.append((False, error))
                finally:
                    _batch.conn = _batch.after = None
        except Exception as error:  # BEGIN or COMMIT failed: nothing of the batch is stored
            _deliver([(future, False, error) for future, _fn in batch])
            return
        for callback in after:
            callback()
        _deliver([(f, ok, value) for (f, _fn), (ok, value) in zip(batch, done, strict=True)])


def _outcome(fn: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, fn()
    except Exception as error:
        return False, error


_Outcome = tuple["Future[Any] | _Awaited", bool, Any]


def _deliver(outcomes: list[_Outcome]) -> None:
    """Settle each write's future: a thread-safe one here, a loop's on its loop, all of one
    loop's in one callback."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        target = outcome[0]
        if isinstance(target, _Awaited):
            by_loop.setdefault(target.loop, []).append(outcome)
        elif outcome[1]:
            target.set_result(outcome[2])
        else:
            target.set_exception(outcome[2])
    for loop, awaited in by_loop.items():
        with suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(_settle_awaited, awaited)


def _settle_awaited(outcomes: list[_Outcome]) -> None:
    for target, ok, value in outcomes:
        assert isinstance(target, _Awaited)
        future = target.future
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _make_begin(statement: str) -> Any:
    def do_begin(dbapi_connection: Any) -> None:
        # SQLAlchemy calls it where pysqlite's dialect would begin (it does nothing there, the
        # driver being in autocommit mode: see _sqlite_pragmas), and wraps what it raises.
        if not statement:
            return
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()

    return do_begin
