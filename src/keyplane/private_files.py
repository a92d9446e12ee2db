"""Files and directories only their owner can read: every file keyplane keeps secrets or state in.

The SQLite database (and, through SQLite, its WAL and shared-memory files, which take the
database's mode), the gateways' replica files, the bootstrap management key, the feed credential
and the deployment secret are created 0600 in directories created 0700, whatever the umask.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents 0700; directories that exist are left as they are."""
    missing = [p for p in (path, *path.parents) if not p.is_dir()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=DIR_MODE)
            os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask
    return path


def private_file(path: Path) -> Path:
    """Make sure ``path`` exists and only its owner can read or write it, before anyone (SQLite,
    for one) opens it with the umask's mode."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    os.close(fd)
    tighten(path)
    return path


def tighten(path: Path) -> None:
    """``chmod 600`` a file keyplane owns, if it exists (one left 0644 by an older version)."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_mode & 0o077:
            os.chmod(path, FILE_MODE)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, created or truncated, readable by its owner only."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tighten(path)


def create_private_once(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless it exists, atomically: of several processes racing, one
    writes and the others read what it wrote. Returns whether this call wrote it."""
    private_dir(path.parent)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_private(staging, text)
    try:
        os.link(staging, path)
    except FileExistsError:
        return False
    finally:
        staging.unlink()
    return True
