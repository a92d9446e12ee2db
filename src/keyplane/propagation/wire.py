"""The feed's wire format, shared by the control plane (producer) and gateways (consumer).

``GET /internal/v1/snapshot`` streams NDJSON: a header line ``{"revision": N}``, then one key view
per line (``keyplane.domain.model.enforcement_view``). With ``format=rows`` each key is a JSON
array instead, its values in ``ROW_FIELDS`` order (``view_to_row``): half the bytes, and the
gateway stores the line as it came. ``after=<apiKeyId>`` resumes a snapshot cut short: only keys
with a greater id follow, read at the (possibly newer) revision of the header; the gateway keeps
the first part's revision and catches up from it through the change feed, which replays every
change since (each key ends at its newest view). The last line of a complete snapshot is
``{"end": <keys sent>}``; a stream without it was cut short.

``GET /internal/v1/changes?after=N`` answers
``{"revision": M, "changes": [{"revision", "op", "view"}], "snapshotRequired": bool}``; ``after``
doubles as the gateway's ack: everything through N is applied. Gateways authenticate with
``Authorization: Bearer <cluster credential>`` and name themselves with ``x-keyplane-gateway``.
A credential speaks for one gateway; the worker processes of a gateway started with
``--workers N`` name themselves ``<gateway id>/worker-<i>`` (``worker_id``) and share its
credential, each acking and shipping usage under its own name.

``GET /internal/v1/seed`` (same credential) answers a ready-made replica file instead: the SQLite
file a gateway keeps (``REPLICA_TABLES`` at ``PRAGMA user_version`` ``REPLICA_SCHEMA``, ``meta``'s
``revision`` the one it was read at), built by the control plane in the background. Its headers
say its revision (``SEED_REVISION_HEADER``), layout (``SEED_SCHEMA_HEADER``) and SHA-256
(``SEED_DIGEST_HEADER``, also its ETag); ``Range: bytes=N-`` with ``If-Range: <ETag>`` resumes a
cut download (206), or sends the newer file whole (200) when that one is gone. 404: no seed is
ready (or it is older than the change log kept): take the snapshot.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any

from keyplane.domain.model import ROW_FIELDS, row_to_view, view_to_row

__all__ = [
    "CHANGES_PATH",
    "CREDENTIAL_PREFIX",
    "GATEWAY_HEADER",
    "INDEX_DIGESTS",
    "INSERT_ROWS",
    "MAX_BATCH",
    "MAX_WAIT_SECONDS",
    "REPLICA_SCHEMA",
    "REPLICA_TABLES",
    "ROWS",
    "ROW_FIELDS",
    "SEED_DIGEST_HEADER",
    "SEED_PATH",
    "SEED_REVISION_HEADER",
    "SEED_SCHEMA_HEADER",
    "SNAPSHOT_PATH",
    "bound_identity",
    "file_sha256",
    "fsync_path",
    "row_to_view",
    "seed_revision",
    "view_to_row",
    "worker_id",
]
SNAPSHOT_PATH = "/internal/v1/snapshot"
CHANGES_PATH = "/internal/v1/changes"
SEED_PATH = "/internal/v1/seed"
SEED_REVISION_HEADER = "x-keyplane-seed-revision"
SEED_SCHEMA_HEADER = "x-keyplane-seed-schema"
SEED_DIGEST_HEADER = "x-keyplane-seed-sha256"
GATEWAY_HEADER = "x-keyplane-gateway"
CREDENTIAL_PREFIX = "kpgw-"
#: Longest a changes request waits for something new before answering with nothing.
MAX_WAIT_SECONDS = 30.0
#: Changes in one answer; a gateway further behind asks again at once.
MAX_BATCH = 2000
#: ``format=`` of a snapshot whose keys are rows.
ROWS = "rows"
#: Between a gateway's id and the index of one of its worker processes (``worker_id``).
WORKER_SEPARATOR = "/worker-"


def worker_id(gateway_id: str, worker: int) -> str:
    """The name worker ``worker`` of gateway ``gateway_id`` uses on the feed (worker 0: the
    gateway's own)."""
    return gateway_id if worker == 0 else f"{gateway_id}{WORKER_SEPARATOR}{worker}"


def bound_identity(gateway_id: str) -> str:
    """The gateway a credential is bound to when ``gateway_id`` speaks: itself, or the gateway
    whose worker it is."""
    base, sep, index = gateway_id.rpartition(WORKER_SEPARATOR)
    return base if sep and base and index.isdigit() else gateway_id


# -- the replica file: one layout for the gateway's replica and the control plane's seed ---------

#: The replica file's layout, its ``PRAGMA user_version``: a file of another one is not read.
REPLICA_SCHEMA = 2
#: ``keys`` holds each key's row (``view_to_row``, JSON, as a BLOB) by id; ``digests`` maps each of
#: its secrets' digests to the id; ``meta`` holds ``revision``. Both clustered on their key.
REPLICA_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, row BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS digests (digest TEXT PRIMARY KEY, id TEXT NOT NULL) WITHOUT ROWID",
)
#: Rows (a JSON array of them, the one parameter) into a keys table (``{table}``): SQLite splits
#: the array and takes each id itself, no per-row Python.
INSERT_ROWS = (
    "INSERT OR REPLACE INTO {table} (id, row) SELECT json_extract(value, '$[0]'),"
    " CAST(value AS BLOB) FROM json_each(?)"
)
#: Every secret's digest of the rows in ``keys``, into an empty ``digests``, in index order.
INDEX_DIGESTS = (
    "INSERT OR REPLACE INTO digests SELECT json_extract(s.value, '$[0]'), k.id"
    " FROM keys AS k, json_each(k.row, '$[1]') AS s ORDER BY 1"
)

#: Bytes of a file hashed at a time.
_HASH_BLOCK = 4 << 20


def file_sha256(path: Path | None) -> Any:
    """A SHA-256 of the bytes of ``path`` (none if None), open to more ``update``s: a seed's
    digest, or that of a download's part already on disk."""
    digest = hashlib.sha256()
    if path is not None:
        with path.open("rb") as file:
            while block := file.read(_HASH_BLOCK):
                digest.update(block)
    return digest


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (the latter after a rename in it) by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seed_revision(path: Path) -> tuple[int, int]:
    """The revision of a replica file (a seed) and the keys it holds (as its builder counted
    them); ValueError if it is not a replica file of this layout."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != REPLICA_SCHEMA:
            raise ValueError(f"a replica file of layout {version}, not {REPLICA_SCHEMA}")
        found = conn.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
        keys = conn.execute("SELECT value FROM meta WHERE name='keys'").fetchone()
        conn.execute("SELECT 1 FROM keys JOIN digests ON digests.id = keys.id LIMIT 1").fetchall()
    except sqlite3.Error as error:
        raise ValueError(f"not a replica file: {error}") from error
    finally:
        conn.close()
    if found is None:
        raise ValueError("a replica file without its revision")
    return int(found[0]), 0 if keys is None else int(keys[0])
