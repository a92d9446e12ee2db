"""The seed file: a ready-made replica file a fresh gateway downloads instead of the row stream.

A gateway that starts with no replica would otherwise take the snapshot as rows and build its
SQLite file itself, row by row, then index the digests: at a million keys that is tens of seconds
on each side (docs/benchmarks.md, #17). The control plane builds that very file
(``wire.REPLICA_TABLES`` at ``wire.REPLICA_SCHEMA``) once, in the background, from one read
transaction (the snapshot's rows, written by the store itself), and serves it as bytes; the
gateway checks its SHA-256, renames it into place, opens it and catches up through the feed from
its revision, as after a restart.

Each control-plane replica keeps its own seed in its seed directory (``seed_dir``, by default
``<data_dir>/seed``): built to a ``.tmp`` file, fsynced, renamed to ``seed-<revision>-<sha>.db``;
never a half-built file served. It is rebuilt when it falls more than
``max(seed_rebuild_changes, 5 % of its keys)`` revisions behind, or behind the change log kept
(a gateway could not catch up from it). The older file is unlinked then: a download under way
holds it open and finishes; one resumed later gets the new file whole (``If-Range``). A keeper
holds a shared lock on the file it serves; at start it serves the newest complete seed already
in the directory (a restart's, checked against the digest in its name) instead of building one,
and after each build it sweeps the files no live keeper holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import structlog

from keyplane.private_files import private_dir, private_file
from keyplane.propagation import feed
from keyplane.propagation.wire import (
    INDEX_DIGESTS,
    INSERT_ROWS,
    REPLICA_SCHEMA,
    REPLICA_TABLES,
    file_sha256,
    fsync_path,
    seed_revision,
)
from keyplane.services.context import Context
from keyplane.storage.db import Database

log = structlog.get_logger("keyplane.propagation.seed")

#: How often the keeper asks whether the seed is due for a rebuild.
CHECK_SECONDS = 5.0
#: The seed is rebuilt once it is this share of its keys behind (or ``rebuild_changes``, if more).
REBUILD_SHARE = 0.05
#: Longest a build may take (a million keys: about half a minute of CPU).
BUILD_TIMEOUT = 1800.0
#: The builder process's niceness: the control plane's requests come first.
BUILD_NICE = 10
_READ = 1 << 20


@dataclass(frozen=True, slots=True)
class Seed:
    path: Path
    revision: int
    sha256: str
    size: int
    keys: int
    #: Wall time and CPU (of the building thread) the build took, in seconds.
    seconds: float
    cpu: float


def build_seed(ctx: Context, directory: Path) -> Seed:
    """Write every key, read in one transaction, to a new replica file in ``directory``."""
    started, cpu = time.perf_counter(), time.thread_time()
    tmp = private_file(private_dir(directory) / f"seed-{secrets.token_hex(8)}.tmp")
    try:
        out = sqlite3.connect(tmp, isolation_level=None)
        try:
            # A file nobody reads until it is complete: no journal; fsynced once, at the end.
            out.execute("PRAGMA journal_mode=OFF")
            out.execute("PRAGMA synchronous=OFF")
            out.execute(f"PRAGMA user_version={REPLICA_SCHEMA}")
            for table in REPLICA_TABLES:
                out.execute(table)
            out.execute("BEGIN")
            revision, keys = 0, 0
            insert = INSERT_ROWS.format(table="keys")
            for item in feed.snapshot_json(ctx):
                if isinstance(item, int):
                    revision = item
                    continue
                out.execute(insert, ("[" + ",".join(item) + "]",))
                keys += len(item)
            out.execute(INDEX_DIGESTS)
            out.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [("revision", str(revision)), ("keys", str(keys))],
            )
            out.execute("COMMIT")
        finally:
            out.close()
        fsync_path(tmp)
        sha = file_sha256(tmp).hexdigest()
        path = directory / f"seed-{revision}-{sha[:16]}.db"
        os.replace(tmp, path)
        fsync_path(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return Seed(
        path=path,
        revision=revision,
        sha256=sha,
        size=path.stat().st_size,
        keys=keys,
        seconds=time.perf_counter() - started,
        cpu=time.thread_time() - cpu,
    )


class ChildBuild:
    """``build_seed`` in a child process at a lower CPU priority, so the control plane's requests
    are neither starved of CPU nor of the GIL meanwhile. The store's URL (which may hold a
    password) goes through the child's stdin, never its command line; the stdin stays open while
    it builds, and the child exits as soon as it closes (the control plane stopped, or ``stop``),
    so no build outlives its control plane."""

    def __init__(self) -> None:
        self._running: subprocess.Popen[bytes] | None = None

    def __call__(self, ctx: Context, directory: Path) -> Seed:
        request = {"url": ctx.db.url.render_as_string(hide_password=False), "dir": str(directory)}
        child = subprocess.Popen(
            [sys.executable, "-m", "keyplane.propagation.seed"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # what went wrong comes back on stdout
        )
        self._running = child
        stdin, stdout = child.stdin, child.stdout
        if stdin is None or stdout is None:  # never: both are pipes
            raise RuntimeError("the seed builder has no pipes")
        watchdog = threading.Timer(BUILD_TIMEOUT, child.kill)
        watchdog.start()
        try:
            with contextlib.suppress(BrokenPipeError):  # a child gone at once says why on stdout
                stdin.write(json.dumps(request).encode() + b"\n")
                stdin.flush()
            out = stdout.read()
            child.wait()
        finally:
            watchdog.cancel()
            self._running = None
            with contextlib.suppress(OSError):
                stdin.close()
            stdout.close()
        lines = out.splitlines()
        fields = json.loads(lines[-1]) if lines else {}
        if child.returncode != 0 or "error" in fields:
            raise RuntimeError(f"the seed build failed ({child.returncode}): {fields.get('error')}")
        return Seed(**{**fields, "path": Path(fields["path"])})

    def stop(self) -> None:
        child = self._running
        if child is not None and child.poll() is None:
            child.kill()


def _die_with_parent() -> None:
    sys.stdin.read()  # returns at EOF: the control plane is gone, or gave this build up
    os._exit(3)


def _child() -> None:
    os.nice(BUILD_NICE)
    request = json.loads(sys.stdin.readline())
    threading.Thread(target=_die_with_parent, daemon=True).start()
    try:
        db = Database(request["url"], pool_size=1)
        try:
            ctx = Context(db=db, server_secret=secrets.token_bytes(32))  # unused: nothing sealed
            seed = build_seed(ctx, Path(request["dir"]))
        finally:
            db.dispose()
    except Exception as error:  # said on stdout, the one channel the parent reads
        print(json.dumps({"error": f"{type(error).__name__}: {error}"[:500]}))
        sys.exit(1)
    print(json.dumps({**dataclasses.asdict(seed), "path": str(seed.path)}))


def _read_seed(path: Path) -> Seed:
    """A complete seed file's description; ValueError if its bytes are not the digest its name
    starts with or its layout is not this one."""
    started, cpu = time.perf_counter(), time.thread_time()
    sha = file_sha256(path).hexdigest()
    if not path.stem.endswith(f"-{sha[:16]}"):
        raise ValueError("a seed file whose bytes are not its name's")
    revision, keys = seed_revision(path)
    return Seed(
        path=path,
        revision=revision,
        sha256=sha,
        size=path.stat().st_size,
        keys=keys,
        seconds=time.perf_counter() - started,
        cpu=time.thread_time() - cpu,
    )


def _sweep(directory: Path) -> None:
    """Unlink the seeds and half-built files of keepers gone (a restart leaves its seed behind):
    those no live keeper holds a lock on, older than a build may take."""
    old_enough = time.time() - BUILD_TIMEOUT
    for path in [*directory.glob("seed-*.db"), *directory.glob("seed-*.tmp")]:
        with contextlib.suppress(OSError), path.open("rb") as file:
            if os.fstat(file.fileno()).st_mtime > old_enough:
                continue
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live keeper serves it
            path.unlink()


class SeedKeeper:
    """This control-plane replica's seed: built at start, rebuilt when due (``keep``)."""

    def __init__(
        self,
        ctx: Context,
        directory: Path,
        *,
        rebuild_changes: int = 10_000,
        min_keys: int = 0,
        in_child: bool = True,
    ) -> None:
        self._ctx = ctx
        self.directory = directory
        self._rebuild_changes = rebuild_changes
        self._min_keys = min_keys
        self._child = ChildBuild() if in_child else None
        self._build = self._child or build_seed
        self._held: BinaryIO | None = None
        self._building = threading.Lock()
        self.current: Seed | None = None

    def ready(self) -> Seed | None:
        """The seed to serve: None if there is none yet, or if a gateway could not catch up from
        it (the change log no longer reaches back to its revision)."""
        seed = self.current
        if seed is None:
            return None
        _, reachable = feed.catch_up_from(self._ctx, seed.revision)
        return seed if reachable else None

    def due(self) -> bool:
        seed = self.current
        if seed is None:
            return self._min_keys == 0 or feed.key_count(self._ctx) >= self._min_keys
        current, reachable = feed.catch_up_from(self._ctx, seed.revision)
        behind = max(self._rebuild_changes, int(seed.keys * REBUILD_SHARE))
        return not reachable or current - seed.revision > behind

    def build(self) -> Seed:
        """Build a new seed now and serve it; the one it replaces is unlinked, and so are the
        files no live keeper holds (a stopped process's)."""
        with self._building:
            seed = self._build(self._ctx, self.directory)
            held = seed.path.open("rb")
            # Held shared while served: another replica's keeper sharing the directory leaves it.
            fcntl.flock(held.fileno(), fcntl.LOCK_SH)
            old, self.current = self.current, seed
            if self._held is not None:
                self._held.close()
            self._held = held
        if old is not None and old.path != seed.path:
            with contextlib.suppress(FileNotFoundError):
                old.path.unlink()
        _sweep(self.directory)
        log.info(
            "seed_built",
            revision=seed.revision,
            keys=seed.keys,
            bytes=seed.size,
            seconds=round(seed.seconds, 3),
            cpu=round(seed.cpu, 3),
        )
        return seed

    def close(self) -> None:
        """Stop a build under way and holding the served seed (the file stays, for a sweep of a
        later keeper)."""
        if self._child is not None:
            self._child.stop()
        with self._building:
            if self._held is not None:
                self._held.close()
                self._held = None

    def reuse(self) -> Seed | None:
        """Serve the newest complete seed already in the directory (this replica's before a
        restart, or another's), once its bytes match its name's digest and its layout is this
        one: a restart need not build one again. ``due`` says whether it is still fresh."""
        found: list[tuple[int, Path]] = []
        for path in self.directory.glob("seed-*.db"):
            parts = path.stem.split("-")
            if len(parts) == 3 and parts[1].isdigit():
                found.append((int(parts[1]), path))
        for _, path in sorted(found, reverse=True):
            with contextlib.suppress(OSError, ValueError, KeyError, sqlite3.Error):
                held = path.open("rb")
                try:
                    fcntl.flock(held.fileno(), fcntl.LOCK_SH)  # no sweep takes it from now on
                    if os.stat(path).st_ino != os.fstat(held.fileno()).st_ino:
                        raise ValueError("swept meanwhile")
                    seed = _read_seed(path)
                except BaseException:
                    held.close()
                    raise
                with self._building:
                    if self._held is not None:
                        self._held.close()
                    self._held, self.current = held, seed
                log.info("seed_reused", revision=seed.revision, keys=seed.keys, bytes=seed.size)
                return seed
        return None

    async def keep(self, every: float = CHECK_SECONDS) -> None:
        """Serve a seed left in the directory, if any; build one when due (at once if there is
        none), for the app's lifetime (in a child process, waited for on a thread)."""
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self.reuse)
        while True:
            try:
                if await asyncio.to_thread(self.due):
                    await asyncio.to_thread(self.build)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a store error now and then: try again later
                log.warning("seed_build_failed", error=type(error).__name__)
            await asyncio.sleep(every)


if __name__ == "__main__":
    _child()
