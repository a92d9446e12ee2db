"""``POST /internal/v1/usage`` in process, on a real SQLite file: a plain Starlette route (no
FastAPI parameter solving), so its checks of the gateway id and the offsets are its own."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from keyplane.control import errors
from keyplane.domain.clock import ManualClock
from keyplane.propagation import feed
from keyplane.propagation.wire import GATEWAY_HEADER
from keyplane.services.context import Context
from keyplane.settings import Settings
from keyplane.storage.db import Database
from keyplane.usage.record import UsageRecord, frame
from keyplane.usage.routes import ingest_router
from keyplane.usage.wire import INGEST_PATH

GATEWAY = "us-east-1/g1"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    db = Database(f"sqlite:///{tmp_path / 'cp.db'}", pool_size=2)
    db.migrate()
    ctx = Context(db=db, server_secret=secrets.token_bytes(32), clock=ManualClock())
    app = FastAPI()
    errors.install(app)
    app.include_router(ingest_router(ctx, Settings(data_dir=tmp_path)))
    credential = feed.issue_credential(ctx, cluster="us-east-1")
    with TestClient(app) as http:
        http.headers.update({"Authorization": f"Bearer {credential}", GATEWAY_HEADER: GATEWAY})
        yield http
    db.dispose()


def batch(count: int) -> bytes:
    now = int(time.time() * 1000)
    return b"".join(
        frame(UsageRecord(now + i, "team", "key", "m", "chat", 200, 10, 20, 30))
        for i in range(count)
    )


def test_a_batch_is_counted_once(client: TestClient) -> None:
    data = batch(3)
    offsets = {"segment": 1, "start": 0, "end": len(data)}
    first = client.post(INGEST_PATH, params=offsets, content=data)
    assert (first.status_code, first.json()) == (200, {"accepted": 3, "duplicates": 0})
    assert first.headers["content-type"] == "application/json"
    again = client.post(INGEST_PATH, params=offsets, content=data)  # a lost ack, resent
    assert again.json() == {"accepted": 0, "duplicates": 3}


@pytest.mark.parametrize("name", ["segment", "start", "end"])
@pytest.mark.parametrize(
    "value", [None, "", "-1", "x", "1.0", " 1", "١", str(2**63), "1e3", "9" * 5000]
)
def test_an_offset_that_is_not_an_int63_is_refused(
    client: TestClient, name: str, value: str | None
) -> None:
    params: dict[str, str] = {"segment": "1", "start": "0", "end": "0"}
    if value is None:
        del params[name]
    else:
        params[name] = value
    answer = client.post(INGEST_PATH, params=params, content=b"")
    assert answer.status_code == 400, value
    assert answer.json()["code"] == "invalid-argument"
    assert answer.json()["error"].startswith(f"{name}: ")


def test_the_largest_offsets_pass_the_route(client: TestClient) -> None:
    top = str(2**63 - 1)
    answer = client.post(INGEST_PATH, params={"segment": top, "start": top, "end": top})
    assert (answer.status_code, answer.json()) == (200, {"accepted": 0, "duplicates": 0})


@pytest.mark.parametrize("gateway", ["", "g" * 129, "tab\there"])
def test_a_missing_or_malformed_gateway_id_is_refused(client: TestClient, gateway: str) -> None:
    answer = client.post(
        INGEST_PATH,
        params={"segment": 1, "start": 0, "end": 0},
        headers={GATEWAY_HEADER: gateway},
    )
    assert answer.status_code == 400
    assert answer.json() == {
        "code": "invalid-argument",
        "error": f"{GATEWAY_HEADER}: a gateway id of 1-128 characters is required",
    }


def test_without_the_credential_nothing_is_read(client: TestClient) -> None:
    del client.headers["Authorization"]
    answer = client.post(INGEST_PATH, params={"segment": 1, "start": 0, "end": 3}, content=b"abc")
    assert answer.status_code == 401
