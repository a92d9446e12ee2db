"""What every use case needs, bundled once at start: the store, the clock, and a few settings."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import TypeVar

from keyplane.domain.clock import Clock, SystemClock
from keyplane.storage.db import Database, WriteLane
from keyplane.storage.unit_of_work import SqlUnitOfWork, UnitOfWork, unit_of_work
from keyplane.usage import budgets

T = TypeVar("T")

#: Opens a unit of work: a write one (True) or a read one (False).
UnitsOfWork = Callable[[bool], AbstractContextManager[UnitOfWork]]


@dataclass(frozen=True)
class Context:
    db: Database
    #: The deployment secret, kept outside the database (keyplane.deployment_secret).
    server_secret: bytes
    clock: Clock = field(default_factory=SystemClock)
    api_key_prefix: str = "xai-"
    management_key_prefix: str = "xai-mgmt-"
    #: A gateway silent for longer is not live (propagation status, ``admin clusters``).
    gateway_liveness: timedelta = timedelta(seconds=15)
    #: Called after a transaction that appended to the change log has committed.
    on_commit: Callable[[int], None] = field(default=lambda _revision: None)
    #: Secrets rotated out, still accepted when opening what they sealed.
    previous_secrets: tuple[bytes, ...] = ()
    #: Where the use cases' units of work come from; None: transactions on ``db``. The service
    #: tests pass in-memory ones (``tests/support/fake_uow.py``).
    units: UnitsOfWork | None = None

    @property
    def reads_here(self) -> bool:
        """Whether a short read may run on the calling thread, the event loop: on SQLite (in WAL,
        a reader waits neither for the writer nor, with ``read_here``, for a pooled connection),
        not on PostgreSQL (a read waits on the server) nor with in-memory units."""
        return self.units is None and self.db.here_reader is not None

    def read_here(self, *, one_statement: bool = False) -> AbstractContextManager[UnitOfWork]:
        """``read()`` on the calling thread's own SQLite connection (see ``reads_here``);
        ``one_statement``: the block runs one statement, its own snapshot (no ``BEGIN``)."""
        return self._sql(write=False, here=True, one_statement=one_statement)

    def write(self) -> AbstractContextManager[UnitOfWork]:
        """A unit of work on a write transaction: commits at the end of the ``with`` block."""
        return self._open(write=True)

    def read(self) -> AbstractContextManager[UnitOfWork]:
        """A unit of work on a read transaction (a consistent view; writes nothing)."""
        return self._open(write=False)

    def sql_write(self) -> AbstractContextManager[SqlUnitOfWork]:
        """A unit of work on a write transaction of ``db`` itself, whatever ``units`` says: for
        the usage room, whose stores are SQL only (``uow.conn``)."""
        return self._sql(write=True)

    async def writing(self, use_case: Callable[[], T]) -> T:
        """``use_case()`` (one that writes) off the event loop, in one hop: on SQLite in the
        store's writer thread (``Database.write_lane``), where writes queue for the one writer
        connection; on PostgreSQL in the loop's default threads. Context variables go along."""
        run = contextvars.copy_context().run
        lane = self.db.write_lane
        if isinstance(lane, WriteLane):
            return await lane.run(partial(run, use_case))
        return await asyncio.get_running_loop().run_in_executor(lane, run, use_case)

    def _open(self, *, write: bool) -> AbstractContextManager[UnitOfWork]:
        if self.units is not None:
            return self.units(write)
        return self._sql(write=write)

    def _sql(
        self, *, write: bool, here: bool = False, one_statement: bool = False
    ) -> AbstractContextManager[SqlUnitOfWork]:
        return unit_of_work(
            self.db,
            write=write,
            clock=self.clock,
            on_commit=self.on_commit,
            refine=budgets.refine,
            here=here,
            one_statement=one_statement,
        )
