"""A throwaway PostgreSQL server for tests: initdb in a temp dir, listening on 127.0.0.1 only.

PostgreSQL refuses to run as root; as root (CI) the server runs as the ``postgres`` user that the
OS package creates. Missing binaries fail the run (KEYPLANE_TEST_ALLOW_MISSING_POSTGRES=1: skip).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.support.procs import free_port, missing_server

ALLOW_MISSING_ENV = "KEYPLANE_TEST_ALLOW_MISSING_POSTGRES"


def _bindir() -> Path | None:
    for candidate in (
        shutil.which("initdb"),
        *sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb")),
    ):
        if candidate:
            return Path(candidate).resolve().parent
    return None


def require_postgres() -> Path:
    found = _bindir()
    if found is None:
        missing_server("PostgreSQL", "postgresql", ALLOW_MISSING_ENV)
    return found


class PostgresServer:
    def __init__(self, bindir: Path, *, fsync: bool = False) -> None:
        """``fsync``: off for tests (nothing to keep), on for benchmarks that measure commits."""
        self.bindir = bindir
        self.fsync = fsync
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="keyplane-pg-"))
        self.data = self.root / "data"
        self._proc: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]

    def start(self, timeout: float = 30.0) -> PostgresServer:
        subprocess.run(
            [*self._as, str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
             "-A", "trust", "-E", "UTF8", "--no-sync"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        return self._launch(timeout)

    def _launch(self, timeout: float) -> PostgresServer:
        """Start the server on the existing data directory and wait until it takes connections;
        after a SIGKILL, retry while the dead server's backends still hold its shared memory."""
        deadline = time.monotonic() + timeout
        while True:
            log = (self.root / "server.log").open("ab")
            self._proc = subprocess.Popen(
                [*self._as, str(self.bindir / "postgres"), "-D", str(self.data),
                 "-p", str(self.port), "-k", str(self.root), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"fsync={'on' if self.fsync else 'off'}", "-c", "max_connections=200"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            log.close()
            while True:
                try:
                    with psycopg.connect(self.dsn("postgres"), connect_timeout=1):
                        return self
                except psycopg.OperationalError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            "PostgreSQL did not start:\n" + (self.root / "server.log").read_text()
                        ) from None
                    if self._proc.poll() is not None:
                        break  # exited (shared memory still in use): launch again
                    time.sleep(0.05)
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the postmaster itself (not the ``runuser`` in front of it), as a crash would."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        assert self._proc is not None
        self._proc.wait(timeout=15)

    def restart(self, timeout: float = 60.0) -> PostgresServer:
        """Start again on the same data after :meth:`kill`: crash recovery, then connections."""
        return self._launch(timeout)

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
