"""One storage suite, every engine: the same use cases on SQLite and on a real PostgreSQL server.

What must hold on both: migrations are idempotent; every mutation commits with a gap-free
revision, in commit order, even with concurrent writers; snapshots are consistent; paging,
idempotency and tombstones behave alike.
"""

from __future__ import annotations

import secrets
import shutil
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from keyplane.control import errors as control_errors
from keyplane.domain.errors import Conflict, NotFound, Unavailable
from keyplane.gateway import http as gateway_http
from keyplane.propagation import feed
from keyplane.services import admin, keys
from keyplane.services.auth import Principal
from keyplane.services.context import Context
from keyplane.storage import tables
from keyplane.storage.db import Database
from tests.support.procs import free_port


def principal_of(ctx: Context, name: str = "team") -> Principal:
    team = admin.create_team(ctx, name=name)
    return Principal(admin.create_management_key(ctx, team_id=team.team_id, name="m").key)


def create(ctx: Context, p: Principal, name: str = "k", **body: object) -> keys.KeyWithSecret:
    created, _ = keys.create_key(
        ctx, principal=p, team_id=p.team_id, spec=keys.parse_new_key({"name": name, **body})
    )
    assert created is not None
    return created


def revisions(ctx: Context) -> list[int]:
    with ctx.db.read() as conn:
        return [
            int(r)
            for r in conn.execute(
                select(tables.change_log.c.revision).order_by(tables.change_log.c.revision)
            ).scalars()
        ]


def test_a_key_lives_and_dies_with_one_revision_per_change(ctx: Context) -> None:
    p = principal_of(ctx)
    made = create(ctx, p, acls=["api-key:endpoint:chat"], qps=5, tpm="9000000000")
    assert made.key.tpm == 9_000_000_000
    updated = keys.update_key(
        ctx, principal=p, api_key_id=made.key.api_key_id, patch={"qps": None}, field_mask="qps"
    )
    assert updated.qps is None
    assert updated.tpm == 9_000_000_000
    rotated = keys.rotate_key(ctx, principal=p, api_key_id=made.key.api_key_id, body={})
    assert len(rotated.key.secrets) == 2
    assert rotated.secret != made.secret
    keys.delete_key(ctx, principal=p, api_key_id=made.key.api_key_id)
    with pytest.raises(NotFound):
        keys.get_key(ctx, principal=p, api_key_id=made.key.api_key_id)
    assert revisions(ctx) == [1, 2, 3, 4]
    status = feed.read_changes(ctx, after=0, limit=10)
    assert [c.op for c in status.changes] == ["upsert", "upsert", "upsert", "delete"]


def test_concurrent_writers_get_gap_free_revisions_in_commit_order(ctx: Context) -> None:
    p = principal_of(ctx)
    errors: list[BaseException] = []
    seen: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            for i in range(25):
                made = create(ctx, p, name=f"k{i}")
                with lock:
                    seen.append(made.key.revision)
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sorted(seen) == list(range(1, 201))
    assert revisions(ctx) == list(range(1, 201))
    with ctx.db.read() as conn:
        counter = conn.execute(select(tables.revision_counter.c.value)).scalar_one()
    assert counter == 200


def test_snapshot_is_consistent_with_its_revision(ctx: Context) -> None:
    p = principal_of(ctx)
    made = [create(ctx, p, name=f"k{i}") for i in range(5)]
    keys.delete_key(ctx, principal=p, api_key_id=made[0].key.api_key_id)
    lines = list(feed.snapshot_lines(ctx))
    assert lines[0] == {"revision": 6}
    assert {v["apiKeyId"] for v in lines[1:]} == {m.key.api_key_id for m in made[1:]}
    for view in lines[1:]:
        assert all(made_secret.secret not in str(view) for made_secret in made)


def test_paging_and_acl_filters(ctx: Context) -> None:
    p = principal_of(ctx)
    for i in range(7):
        create(ctx, p, name=f"k{i}", acls=["api-key:endpoint:chat"] if i % 2 else [])
    seen: list[str] = []
    token = None
    while True:
        page = keys.list_keys(ctx, principal=p, team_id=p.team_id, page_size=3, page_token=token)
        seen += [k.name for k in page.keys]
        token = page.next_token
        if token is None:
            break
    assert seen == [f"k{i}" for i in range(7)]
    chat = keys.list_keys(
        ctx,
        principal=p,
        team_id=p.team_id,
        page_size=None,
        page_token=None,
        acl_filters=["api-key:endpoint:chat"],
    )
    assert [k.name for k in chat.keys] == ["k1", "k3", "k5"]


def test_idempotent_create_on_every_engine(ctx: Context) -> None:
    p = principal_of(ctx)
    spec = keys.parse_new_key({"name": "once"})

    def render(result: keys.KeyWithSecret) -> bytes:
        return f"{result.key.api_key_id}:{result.secret}".encode()

    first, _ = keys.create_key(
        ctx, principal=p, team_id=p.team_id, spec=spec, idempotency_key="abc", render=render
    )
    again, replay = keys.create_key(
        ctx, principal=p, team_id=p.team_id, spec=spec, idempotency_key="abc", render=render
    )
    assert first is not None
    assert again is None
    assert replay == render(first)
    with pytest.raises(Conflict):
        keys.create_key(
            ctx,
            principal=p,
            team_id=p.team_id,
            spec=keys.parse_new_key({"name": "other"}),
            idempotency_key="abc",
            render=render,
        )
    assert revisions(ctx) == [1]


def test_acks_and_propagation_status(ctx: Context) -> None:
    from keyplane.settings import Settings

    settings = Settings()
    p = principal_of(ctx)
    made = create(ctx, p)
    book = feed.AckBook()
    book.served(ctx, gateway_id="us-east-1/a", cluster="us-east-1", revision=1)
    book.ack(ctx, gateway_id="us-east-1/a", cluster="us-east-1", revision=1)
    book.ack(ctx, gateway_id="eu-west-1/a", cluster="eu-west-1", revision=0)
    status = feed.propagation_status(ctx, settings, principal=p, api_key_id=made.key.api_key_id)
    assert status == {"us-east-1.api.keyplane.local": True, "eu-west-1.api.keyplane.local": False}
    keys.delete_key(ctx, principal=p, api_key_id=made.key.api_key_id)
    status = feed.propagation_status(ctx, settings, principal=p, api_key_id=made.key.api_key_id)
    assert status["us-east-1.api.keyplane.local"] is False  # the deletion (revision 2) not acked
    other = principal_of(ctx, "other team")
    with pytest.raises(NotFound):
        feed.propagation_status(ctx, settings, principal=other, api_key_id=made.key.api_key_id)


def test_idempotent_answers_expire_and_survive_a_secret_rotation(ctx: Context) -> None:
    from dataclasses import replace

    from keyplane.domain.clock import ManualClock
    from keyplane.services import idempotency

    clock = ManualClock()
    ctx = replace(ctx, clock=clock)
    p = principal_of(ctx)
    spec = keys.parse_new_key({"name": "once"})

    def render(result: keys.KeyWithSecret) -> bytes:
        return result.secret.encode()

    def call() -> tuple[keys.KeyWithSecret | None, bytes | None]:
        return keys.create_key(
            ctx, principal=p, team_id=p.team_id, spec=spec, idempotency_key="k", render=render
        )

    first, _ = call()
    assert first is not None
    # The deployment secret rotated: the previous one still opens what it sealed.
    ctx = replace(ctx, server_secret=secrets.token_bytes(32), previous_secrets=(ctx.server_secret,))
    assert call() == (None, first.secret.encode())
    clock.advance(24 * 3600 + 1)
    idempotency.purge_expired(ctx)
    with ctx.db.read() as conn:
        assert conn.execute(select(tables.idempotency_keys)).first() is None
    again, replay = call()
    assert replay is None
    assert again is not None
    assert again.secret != first.secret


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_store_out_of_reach_is_unavailable_not_an_internal_error(
    engine: str, tmp_path: Path
) -> None:
    """PostgreSQL down (nothing listens on its port) or SQLite's file gone with its directory:
    reads and writes raise ``Unavailable``, which both planes' error maps answer 503 (clients
    retry it)."""
    if engine == "sqlite":
        url = f"sqlite:///{tmp_path / 'gone' / 'keyplane.db'}"
    else:
        url = f"postgresql://postgres@127.0.0.1:{free_port()}/keyplane"
    db = Database(url)
    shutil.rmtree(tmp_path / "gone", ignore_errors=True)
    try:
        for transaction in (db.read, db.write):
            with pytest.raises(Unavailable) as raised, transaction() as conn:
                conn.execute(select(1))
            assert control_errors.http_status(raised.value) == 503
            assert gateway_http.status_of(raised.value) == 503
    finally:
        db.dispose()


def test_a_team_name_is_taken_once_and_the_refusal_leaves_the_store_usable(ctx: Context) -> None:
    team = admin.create_team(ctx, name="taken")
    with pytest.raises(Conflict, match="already exists"):
        admin.create_team(ctx, name="taken")
    assert admin.list_teams(ctx) == [team]
    assert admin.create_team(ctx, name="free").name == "free"
