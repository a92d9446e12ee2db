"""Issue #14.2 and #14.4: what a copy of the data directory gives away, and whose replay is whose.

The attack of the issue: with only a copy of the database, guess low-entropy Idempotency-Keys
(``idem-0`` … ``idem-999``), find their records, derive their sealing keys from whatever secret
the database holds, and open the stored create answers to recover live secrets. It must fail: the
secret that locates and seals records lives outside the data directory.
"""

from __future__ import annotations

import hashlib
import hmac
import shutil
import sqlite3
import stat
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.support.management import connect
from tests.support.procs import Deployment, admin_context, create_management_key

GUESSES = [f"idem-{i}" for i in range(1000)]


def _client(dep: Deployment, secret: str) -> httpx2.Client:
    return connect(dep.control_url, secret)


def _create(client: httpx2.Client, team: str, name: str, idem: str) -> httpx2.Response:
    return client.post(
        f"/auth/teams/{team}/api-keys",
        json={"name": name, "acls": ["api-key:model:*", "api-key:endpoint:*"]},
        headers={"Idempotency-Key": idem},
    )


@pytest.fixture
def running(deployment: Deployment) -> Deployment:
    deployment.start_control()
    return deployment


def _rows(db: Path, table: str) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(f"SELECT * FROM {table}")]


def _try_open(sealed: bytes, key: bytes) -> bytes | None:
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], None)
    except (InvalidTag, ValueError):
        return None


def test_a_copy_of_the_data_directory_opens_no_secret(
    running: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> None:
    dep = running
    team, mgmt = dep.create_team("victim")
    secrets: list[str] = []
    with _client(dep, mgmt) as client:
        for i in range(10):
            response = _create(client, team, f"k{i}", f"idem-{i}")
            assert response.status_code == 200, response.text
            secrets.append(response.json()["apiKey"])
        # The records exist: the same calls replay.
        assert _create(client, team, "k0", "idem-0").headers.get("idempotent-replayed") == "true"

    stolen = tmp_path_factory.mktemp("stolen") / "data"
    shutil.copytree(dep.data_dir, stolen)
    db = stolen / "keyplane.db"

    # No plaintext secret anywhere in the copy (database, WAL, anything else).
    for path in stolen.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not any(s.encode() in content for s in secrets), path

    records = _rows(db, "idempotency_keys")
    assert records, "the sealed answers are in the database"
    # Every value the database holds is a candidate secret; ids are known from the copy too.
    candidates = [str(row["value"]).encode() for row in _rows(db, "meta")]
    candidates += [bytes.fromhex(c.decode()) for c in candidates if _is_hex(c)]
    teams = [str(row["team_id"]) for row in _rows(db, "teams")]
    mgmt_ids = [str(row["key_id"]) for row in _rows(db, "management_keys")]
    sealed = [bytes(r["sealed_response"]) for r in records if r["sealed_response"] is not None]
    located = {str(v) for r in records for v in r.values() if isinstance(v, str)}
    opened = 0
    for guess in GUESSES:
        # The old scheme: records found by an unsalted SHA-256 of the Idempotency-Key.
        if hashlib.sha256(guess.encode()).hexdigest() in located:
            opened += 1
        for secret in candidates:
            for owner in teams:
                for parts in ([owner, guess], *([owner, m, guess] for m in mgmt_ids)):
                    for purpose in ("idempotency", "keyplane idempotency seal v2"):
                        message = "\0".join([purpose, *parts]).encode()
                        key = hmac.new(secret, message, hashlib.sha256).digest()
                        opened += sum(_try_open(s, key) is not None for s in sealed[:3])
    assert opened == 0


def _is_hex(value: bytes) -> bool:
    try:
        bytes.fromhex(value.decode())
    except ValueError:
        return False
    return len(value) % 2 == 0


def test_data_files_and_directories_are_private(running: Deployment) -> None:
    from keyplane import bootstrap

    dep = running
    with admin_context(dep) as ctx:
        made = bootstrap.ensure(ctx, dep.data_dir)
    assert made.secret is not None
    with _client(dep, made.secret) as client:
        assert _create(client, made.team_id, "k", "idem").status_code == 200
    dep.start_gateway("us-east-1")
    secret_file = dep.data_dir.with_name(dep.data_dir.name + ".secret")
    files = [
        dep.data_dir / "keyplane.db",
        dep.data_dir / "keyplane.db-wal",
        dep.data_dir / "keyplane.db-shm",
        secret_file,
        made.path,
    ]
    gateway_dirs = list((dep.data_dir / "gateways").iterdir())
    assert gateway_dirs
    for directory in gateway_dirs:
        files += [p for p in directory.iterdir() if p.is_file()]
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert any(p.name == "replica.db" for p in files)
    for path in files:
        assert path.exists(), path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((dep.data_dir / "gateways").stat().st_mode) == 0o700


def test_replays_belong_to_the_management_key_that_made_the_call(running: Deployment) -> None:
    dep = running
    team, first = dep.create_team("replays")
    _, second = create_management_key(dep, team, name="colleague")
    with _client(dep, first) as a, _client(dep, second) as b:
        made = _create(a, team, "k", "same-idem")
        assert made.status_code == 200
        again = _create(a, team, "k", "same-idem")
        assert again.headers.get("idempotent-replayed") == "true"
        assert again.json()["apiKey"] == made.json()["apiKey"]
        # Another management key of the same team, same Idempotency-Key: its own request.
        other = _create(b, team, "k", "same-idem")
        assert other.status_code == 200
        assert other.headers.get("idempotent-replayed") is None
        assert other.json()["apiKey"] != made.json()["apiKey"]
        assert other.json()["apiKeyId"] != made.json()["apiKeyId"]


@pytest.mark.parametrize("then", ["rotate", "delete"])
def test_a_replay_after_rotation_or_deletion_is_a_conflict(running: Deployment, then: str) -> None:
    dep = running
    team, mgmt = dep.create_team(f"dead-{then}")
    with _client(dep, mgmt) as client:
        made = _create(client, team, "k", "idem-dead")
        assert made.status_code == 200
        key_id = made.json()["apiKeyId"]
        if then == "rotate":
            assert client.post(f"/auth/api-keys/{key_id}/rotate", json={}).status_code == 200
        else:
            assert client.delete(f"/auth/api-keys/{key_id}").status_code == 200
        replay = _create(client, team, "k", "idem-dead")
        assert replay.status_code == 409, replay.text
        body = replay.json()
        assert set(body) == {"code", "error"}
        assert "rotated or deleted" in body["error"]
        assert made.json()["apiKey"] not in replay.text
