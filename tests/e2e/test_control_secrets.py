"""Secrets are shown once and kept nowhere: not in the database, not in the log, not in an error.

Keys are made, rotated, replayed and misused over HTTP; then every file of the control plane's data
directory and its log are read as bytes and searched for each secret. The same search finds each
secret's SHA-256 digest in the database, which shows it reads what the store really wrote.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.management import connect
from tests.support.procs import Deployment, admin_context, create_team_in


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def store_bytes(dep: Deployment) -> bytes:
    """Every file under the data directory: the database, its -wal and -shm, anything else."""
    files = sorted(p for p in dep.data_dir.rglob("*") if p.is_file())
    assert dep.data_dir / "keyplane.db" in files
    return b"".join(p.read_bytes() for p in files)


def log_bytes(dep: Deployment) -> bytes:
    (control,) = [p for p in dep.procs if p.name == "control"]
    return Path(control.log_path).read_bytes()


@pytest.fixture(scope="module")
def exercised(module_deployment: Deployment) -> dict[str, Any]:
    """Drive the control plane through everything that handles a secret; return what was seen."""
    dep = module_deployment
    with admin_context(dep) as ctx:
        team_id, management_secret = create_team_in(ctx, f"secrets-{uuid.uuid4()}")
    path = f"/auth/teams/{team_id}/api-keys"
    live: dict[str, str] = {}  # key id -> its current secret
    retired: list[str] = []  # secrets replaced by a rotation
    errors: list[str] = []  # the text of every error answer
    with connect(dep.control_url, management_secret) as c:
        for i in range(5):
            body = {"name": f"key {i}", "acls": ["api-key:model:*"], "qps": i + 1, "tpm": "100"}
            created = c.post(path, json=body).json()
            live[created["apiKeyId"]] = created["apiKey"]

        headers = {"Idempotency-Key": "secrets-test"}
        first = c.post(path, json={"name": "idempotent"}, headers=headers)
        replay = c.post(path, json={"name": "idempotent"}, headers=headers)
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.json()["apiKey"] == first.json()["apiKey"]
        live[first.json()["apiKeyId"]] = first.json()["apiKey"]

        rotated_id = next(iter(live))
        for grace in ("2000-01-01T00:00:00Z", None):  # old secret dead at once, then a 24 h grace
            body = {} if grace is None else {"oldSecretExpireTime": grace}
            rotated = c.post(f"/auth/api-keys/{rotated_id}/rotate", json=body).json()
            retired.append(live[rotated_id])
            live[rotated_id] = rotated["apiKey"]

        # The seed's update sends the whole key object back, secret included.
        key_id, secret = next(iter(live.items()))
        whole = {"apiKeyId": key_id, "apiKey": secret, "name": "renamed", "qpm": 7}
        assert c.put(path, json={"apiKey": whole, "fieldMask": "name,qpm"}).status_code == 200
        errors.extend(
            c.put(path, json={"apiKey": whole, "fieldMask": mask}).text
            for mask in ("bogus", "apiKey", "")
        )
        errors.append(c.put(path, json={"apiKey": {**whole, "qpm": "x"}, "fieldMask": "qpm"}).text)
        # A secret where it does not belong: in a query string, in an Idempotency-Key.
        errors.append(c.get(path, params={"paginationToken": secret}).text)
        c.post(path, json={"name": "by header"}, headers={"Idempotency-Key": secret})
        live_ids = {k["apiKeyId"] for k in c.get(path).json()["apiKeys"]}

    # A management key that looks right but is not one, and an API key in its place.
    impostor = "xai-mgmt-" + "Q" * 80
    for bearer in (impostor, secret):
        with connect(dep.control_url, bearer) as c:
            r = c.get(path)
            assert r.status_code == 401
            errors.append(r.text)

    return {
        "live": live,
        "retired": retired,
        "management": management_secret,
        "impostor": impostor,
        "errors": errors,
        "live_ids": live_ids,
    }


def test_no_secret_is_in_the_store(module_deployment: Deployment, exercised: Any) -> None:
    stored = store_bytes(module_deployment)
    secrets = [*exercised["live"].values(), *exercised["retired"], exercised["management"]]

    assert len(set(secrets)) == 9
    for secret in secrets:
        body = secret.split("-")[-1]  # the 80 random characters, without the prefix
        assert body.encode() not in stored


def test_each_live_secret_is_stored_as_its_sha256_digest(
    module_deployment: Deployment, exercised: Any
) -> None:
    stored = store_bytes(module_deployment)

    assert set(exercised["live"]) <= exercised["live_ids"]
    for secret in [*exercised["live"].values(), exercised["management"]]:
        assert digest(secret).encode() in stored, "the search must find what is really there"


def test_no_secret_is_in_the_log(module_deployment: Deployment, exercised: Any) -> None:
    logged = log_bytes(module_deployment)
    secrets = [
        *exercised["live"].values(),
        *exercised["retired"],
        exercised["management"],
        exercised["impostor"],
    ]

    assert b'"event": "request"' in logged, "the access log is there to be searched"
    for secret in secrets:
        assert secret.split("-")[-1].encode() not in logged
    assert b"Traceback" not in logged


def test_no_error_answer_echoes_a_secret(exercised: Any) -> None:
    secrets = [*exercised["live"].values(), exercised["management"], exercised["impostor"]]

    assert len(exercised["errors"]) == 7
    for text in exercised["errors"]:
        body = json.loads(text)
        assert set(body) == {"code", "error"}
        for secret in secrets:
            assert secret.split("-")[-1] not in text
