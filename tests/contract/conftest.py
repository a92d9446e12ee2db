"""Fixtures of the contract suites: a ``Context`` on SQLite and on a real PostgreSQL server, and a
``redis-server`` of a test's own."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyplane.services.context import Context
from keyplane.storage.db import Database
from tests.support.postgres import PostgresServer, require_postgres
from tests.support.redis import RedisServer, running_redis


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(require_postgres()).start()
    yield server
    server.stop()


_counter = iter(range(1_000_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def bare_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database of either engine with no schema yet, for tests that migrate it step by step."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'keyplane.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database(f"t{next(_counter)}")
    db = Database(url)
    yield db
    db.dispose()


@pytest.fixture
def ctx(bare_db: Database) -> Context:
    """A ``Context`` on a migrated database of either engine."""
    bare_db.migrate()
    bare_db.migrate()  # idempotent
    return Context(db=bare_db, server_secret=secrets.token_bytes(32))


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A ``redis-server`` of the test's own: killing or stopping it disturbs nothing else."""
    with running_redis() as server:
        yield server
