"""Shared bits of the benchmarks: the machine header, percentiles, RSS, Markdown tables, and a fast
in-process bulk load of API keys (``keyplane.storage.bulk``).

Run the benches from the repository root (``bench/run`` does) so ``tests.support.procs`` imports.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "src") not in sys.path:
    sys.path.insert(1, str(ROOT / "src"))

from tests.support.management import connect  # noqa: E402
from tests.support.procs import (  # noqa: E402
    OPERATOR,
    PYTHON,
    Deployment,
    Proc,
    free_port,
    wait_for,
)

__all__ = [
    "OPERATOR",
    "PYTHON",
    "Deployment",
    "Proc",
    "connect",
    "free_port",
    "wait_for",
]


# -- reporting ------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> str:
    """The 1/5/15-minute load averages: other work on the machine skews every number here."""
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def header(title: str) -> str:
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"### {title}\n\n"
        f"{now} · nproc {os.cpu_count()} · CPU {cpu_model()} · "
        f"Python {platform.python_version()} · load avg at start {loadavg()}\n"
    )


def footer() -> str:
    return f"\nLoad average at end (1/5/15 min): {loadavg()}.\n"


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.0f} MiB"


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB, from /proc/<pid>/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def pid_of(proc: Proc) -> int:
    assert proc.popen is not None
    return proc.popen.pid


# -- bulk population ------------------------------------------------------------------------------


def populate(
    deployment: Deployment,
    team_id: str,
    count: int,
    *,
    batch: int = 10_000,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> Any:
    """Insert ``count`` API keys for ``team_id`` straight into the control plane's store, with
    :func:`keyplane.storage.bulk.load_api_keys` (``options`` go to it). Run it while the control
    plane is stopped (or accept that it holds the write lock meanwhile)."""
    from keyplane.runtime import open_context
    from keyplane.storage.bulk import load_api_keys

    ctx = open_context(deployment.settings())
    try:
        return load_api_keys(
            ctx.db,
            team_id=team_id,
            count=count,
            prefix=ctx.api_key_prefix,
            batch=batch,
            progress=progress,
            **options,
        )
    finally:
        ctx.db.dispose()


def current_revision(deployment: Deployment) -> int:
    from keyplane.runtime import open_context
    from keyplane.storage.changelog import current_revision as read

    ctx = open_context(deployment.settings(), migrate=False)
    try:
        with ctx.db.read() as conn:
            return read(conn)
    finally:
        ctx.db.dispose()


def stop_servers_on_sigterm() -> None:
    """Turn SIGTERM (and SIGHUP) into SystemExit, so ``finally`` blocks stop the servers."""
    import signal

    def bail(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, bail)
    signal.signal(signal.SIGHUP, bail)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- backends: SQLite, and a throwaway PostgreSQL -------------------------------------------------

BACKENDS = ("sqlite", "postgresql")
BACKEND_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def backends_option(description: str) -> list[str]:
    """The stores to run on, from ``--backend sqlite|postgresql|both`` (else BENCH_BACKENDS, else
    both). With "both" and no PostgreSQL installed, SQLite alone (said on stderr)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgresql", "both"),
        default=os.environ.get("BENCH_BACKENDS", "both"),
        help="control-plane store(s) to measure (default: both, or $BENCH_BACKENDS)",
    )
    choice = parser.parse_args().backend
    if choice not in ("sqlite", "postgresql", "both"):
        parser.error(f"BENCH_BACKENDS={choice!r}: expected sqlite, postgresql or both")
    if choice != "both":
        return [choice]
    if postgres_bindir() is None:
        log("PostgreSQL (initdb) not installed: measuring SQLite only")
        return ["sqlite"]
    return list(BACKENDS)


def postgres_bindir() -> Path | None:
    import shutil

    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    for found in (shutil.which("initdb"), *installed):
        if found:
            return Path(found).resolve().parent
    return None


class ThrowawayPostgres:
    """``tests.support.postgres.PostgresServer`` (initdb in a temp dir, 127.0.0.1 only), with
    fsync turned back on, as a production PostgreSQL runs
    (BENCH_PG_FSYNC=off keeps the test helper's fsync=off). Stopped and deleted on exit."""

    def __enter__(self) -> Any:
        bindir = postgres_bindir()
        if bindir is None:
            raise SystemExit("PostgreSQL's initdb was not found (apt-get install -y postgresql)")
        self.fsync = os.environ.get("BENCH_PG_FSYNC", "on") != "off"
        self.server = _postgres_server(bindir, fsync=self.fsync)
        try:
            self.server.start()
            got = self.execute("SHOW fsync")
            assert got == ("on" if self.fsync else "off"), f"PostgreSQL fsync is {got}"
            self.version = str(self.execute("SHOW server_version")).split()[0]
        except BaseException:
            self.server.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def execute(self, sql: str, database: str = "postgres") -> Any:
        """Run one statement in autocommit; the first column of its first row, if any."""
        import psycopg

        with psycopg.connect(self.server.dsn(database), autocommit=True) as conn:
            cur = conn.execute(sql)
            row = cur.fetchone() if cur.description else None
            return row[0] if row else None

    def database(self, name: str) -> str:
        """A new database: its SQLAlchemy URL, for ``Deployment(top_config=database_url = ...)``."""
        return self.server.create_database(name)

    def label(self) -> str:
        return f"PostgreSQL {self.version}, fsync {'on' if self.fsync else 'off'}"

    def cpu_seconds(self) -> float:
        """CPU time so far of the whole server: postmaster, backends, background workers (and the
        ones that exited, counted in their parent's cutime/cstime)."""
        assert self.server._proc is not None
        return tree_cpu_seconds(self.server._proc.pid)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid``, its waited-for children, and its live descendants."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    pending = [pid]
    while pending:
        p = pending.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) / ticks
            for task in Path(f"/proc/{p}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def _tree_tasks(pid: int) -> list[Path]:
    """The /proc task directories of ``pid``'s threads and of its live descendants' threads."""
    tasks: list[Path] = []
    pending = [pid]
    while pending:
        p = pending.pop()
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                tasks.append(task)
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return tasks


def tree_schedstat(pid: int) -> tuple[float, int]:
    """Seconds the threads of ``pid`` and its descendants have waited on a run queue (runnable,
    not running) so far, and their time slices: /proc/<tid>/schedstat's 2nd and 3rd fields."""
    waited, slices = 0, 0
    for task in _tree_tasks(pid):
        try:
            fields = (task / "schedstat").read_text().split()
        except OSError:
            continue
        waited += int(fields[1])
        slices += int(fields[2])
    return waited / 1e9, slices


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` and its descendants on ``cpus`` (threads made later inherit it)."""
    for task in _tree_tasks(pid):
        with contextlib.suppress(OSError, ValueError):
            os.sched_setaffinity(int(task.name), cpus)


def _postgres_server(bindir: Path, *, fsync: bool) -> Any:
    """The test helper's throwaway server, with fsync as asked."""
    from tests.support.postgres import PostgresServer

    return PostgresServer(bindir, fsync=fsync)
