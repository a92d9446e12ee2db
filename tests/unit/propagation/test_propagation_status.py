"""Propagation status on a clock the test moves: ``true`` only when every *live* gateway of a
cluster has *applied* (acked) the key's revision; a cluster silent past the liveness window reads
``false``.

In process, on a real SQLite file, through the same ack path the feed route uses (``AckBook``).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient
from starlette.types import Message

from keyplane.control import errors as control_errors
from keyplane.domain import keysecrets
from keyplane.domain.clock import ManualClock
from keyplane.domain.errors import NotFound, PermissionDenied
from keyplane.propagation import feed
from keyplane.propagation.notifier import ChangeNotifier
from keyplane.propagation.routes import feed_router
from keyplane.propagation.wire import (
    CHANGES_PATH,
    GATEWAY_HEADER,
    MAX_BATCH,
    MAX_WAIT_SECONDS,
    ROWS,
    SNAPSHOT_PATH,
    row_to_view,
)
from keyplane.services import admin, keys
from keyplane.services.auth import Principal
from keyplane.services.context import Context
from keyplane.settings import Settings
from keyplane.storage import gateways as gateway_rows
from keyplane.storage.db import Database

LIVENESS = 10.0
US, EU = "us-east-1", "eu-west-1"
HOSTS = {US: "us-east-1.api.keyplane.local", EU: "eu-west-1.api.keyplane.local"}


class World:
    def __init__(self, root: Path) -> None:
        self.db = Database(f"sqlite:///{root / 'cp.db'}", pool_size=2)
        self.db.migrate()
        self.clock = ManualClock()
        self.ctx = Context(
            db=self.db,
            server_secret=secrets.token_bytes(32),
            clock=self.clock,
            gateway_liveness=timedelta(seconds=LIVENESS),
        )
        self.settings = Settings(data_dir=root, gateway_liveness_seconds=LIVENESS)
        team = admin.create_team(self.ctx, name="t")
        self.principal = Principal(
            admin.create_management_key(self.ctx, team_id=team.team_id, name="m").key
        )
        self.acks = feed.AckBook()

    def create(self) -> tuple[str, int]:
        created, _ = keys.create_key(
            self.ctx,
            principal=self.principal,
            team_id=self.principal.team_id,
            spec=keys.parse_new_key({"name": "k"}),
        )
        assert created is not None
        return created.key.api_key_id, feed.current_revision(self.ctx)

    def ack(self, gateway: str, cluster: str, revision: int) -> None:
        # As the feed does: the gateway has been served the head, and says what it applied.
        head = feed.current_revision(self.ctx)
        self.acks.served(self.ctx, gateway_id=gateway, cluster=cluster, revision=head)
        self.acks.ack(self.ctx, gateway_id=gateway, cluster=cluster, revision=revision)

    def status(self, key_id: str) -> dict[str, bool]:
        raw = feed.propagation_status(
            self.ctx, self.settings, principal=self.principal, api_key_id=key_id
        )
        by_cluster = {name: raw[host] for name, host in HOSTS.items()}
        assert len(raw) == len(by_cluster)
        return by_cluster


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.db.dispose()


def test_no_gateway_at_all_reads_false(world: World) -> None:
    key_id, _ = world.create()
    assert world.status(key_id) == {US: False, EU: False}


def test_true_only_once_the_applied_revision_reaches_the_key(world: World) -> None:
    key_id, revision = world.create()
    world.ack("us-a", US, revision - 1)
    world.ack("eu-a", EU, revision - 1)
    assert world.status(key_id) == {US: False, EU: False}
    world.ack("us-a", US, revision)
    assert world.status(key_id) == {US: True, EU: False}
    world.ack("eu-a", EU, revision + 5)  # beyond the head: not believed (issue #14.6)
    assert world.status(key_id) == {US: True, EU: False}
    world.ack("eu-a", EU, revision)
    assert world.status(key_id) == {US: True, EU: True}


def test_every_live_gateway_of_the_cluster_must_have_applied_it(world: World) -> None:
    key_id, revision = world.create()
    world.ack("us-a", US, revision)
    world.ack("us-b", US, revision - 1)
    assert world.status(key_id)[US] is False
    world.ack("us-b", US, revision)
    assert world.status(key_id)[US] is True


def test_a_gateway_of_another_cluster_does_not_count(world: World) -> None:
    key_id, revision = world.create()
    world.ack("us-a", US, revision)
    world.ack("us-b", US, revision)
    assert world.status(key_id)[EU] is False


def test_a_cluster_silent_past_the_liveness_window_reads_false(world: World) -> None:
    key_id, revision = world.create()
    world.ack("us-a", US, revision)
    world.clock.advance(LIVENESS - 0.001)
    assert world.status(key_id)[US] is True
    world.clock.advance(0.001)  # exactly the window: no longer live
    assert world.status(key_id)[US] is False
    world.ack("us-a", US, revision)  # it polls again: live again
    assert world.status(key_id)[US] is True


def test_a_dead_gateway_behind_does_not_hold_its_live_siblings_back(world: World) -> None:
    key_id, revision = world.create()
    world.ack("us-dead", US, revision - 1)
    world.clock.advance(LIVENESS)
    world.ack("us-live", US, revision)
    assert world.status(key_id)[US] is True


def test_a_gateway_polling_steadily_at_one_revision_stays_live(world: World) -> None:
    """Acks that only refresh "last seen" are thinned out, never so much that a gateway polling
    at the feed's pace looks silent."""
    key_id, revision = world.create()
    step = LIVENESS / 4
    for _ in range(12):  # three liveness windows
        world.ack("us-a", US, revision)
        world.clock.advance(step)
        assert world.status(key_id)[US] is True


def test_refresh_acks_are_thinned_but_a_new_revision_is_written_at_once(world: World) -> None:
    key_id, revision = world.create()
    world.ack("us-a", US, revision - 1)
    world.clock.advance(0.1)
    world.ack("us-a", US, revision)  # a new revision within the refresh interval: written
    assert world.status(key_id)[US] is True


def test_the_refresh_interval_is_bounded_by_the_liveness_window(world: World) -> None:
    """With a short window, an ack a quarter-window after the last one is written, so the gateway
    stays live; a fixed two-second refresh would lose it."""
    short = timedelta(seconds=1)
    ctx = Context(
        db=world.db,
        server_secret=world.ctx.server_secret,
        clock=world.clock,
        gateway_liveness=short,
    )
    world.ctx = ctx
    key_id, revision = world.create()
    world.ack("us-a", US, revision)
    world.clock.advance(0.25)
    world.ack("us-a", US, revision)
    world.clock.advance(0.8)  # 1.05 s after the first ack, 0.8 s after the second
    assert world.status(key_id)[US] is True


def test_status_of_an_unknown_or_foreign_key_is_not_found(world: World) -> None:
    with pytest.raises(NotFound):
        world.status("00000000-0000-0000-0000-000000000000")
    other = admin.create_team(world.ctx, name="other")
    stranger = Principal(
        admin.create_management_key(world.ctx, team_id=other.team_id, name="m").key
    )
    key_id, _ = world.create()
    with pytest.raises(NotFound):
        feed.propagation_status(world.ctx, world.settings, principal=stranger, api_key_id=key_id)


def test_cluster_view_reports_lag_and_liveness(world: World) -> None:
    _, revision = world.create()
    world.ack("us-a", US, revision - 1)
    world.clock.advance(LIVENESS)
    world.ack("eu-a", EU, revision)
    current, rows = feed.cluster_view(world.ctx)
    assert current == revision
    by_id = {r.gateway_id: r for r in rows}
    assert (by_id["us-a"].lag, by_id["us-a"].live) == (1, False)
    assert (by_id["eu-a"].lag, by_id["eu-a"].live) == (0, True)
    assert (by_id["eu-a"].cluster, by_id["eu-a"].applied_revision) == (EU, revision)


def test_read_changes_answers_by_where_the_follower_stands(world: World) -> None:
    world.create()
    world.create()
    current = feed.current_revision(world.ctx)
    ahead = feed.read_changes(world.ctx, after=current + 1, limit=10)
    assert (ahead.snapshot_required, ahead.revision, ahead.changes) == (True, current, [])
    level = feed.read_changes(world.ctx, after=current, limit=10)
    assert (level.snapshot_required, level.revision, level.changes) == (False, current, [])
    behind = feed.read_changes(world.ctx, after=current - 1, limit=10)
    assert not behind.snapshot_required
    assert [c.revision for c in behind.changes] == [current]
    assert behind.revision == current
    one = feed.read_changes(world.ctx, after=0, limit=1)
    assert [c.revision for c in one.changes] == [1]
    assert one.revision == 1
    feed.compact(world.ctx, keep=1)
    assert feed.read_changes(world.ctx, after=current - 1, limit=10).snapshot_required is False
    assert feed.read_changes(world.ctx, after=current - 2, limit=10).snapshot_required is True


def test_forgotten_gateways_are_dropped_by_compaction(world: World) -> None:
    _, revision = world.create()
    world.ack("old", US, revision)
    world.clock.advance(feed.FORGET_AFTER.total_seconds() + 1)
    world.ack("new", US, revision)
    feed.compact(world.ctx, keep=10)
    assert [r.gateway_id for r in feed.cluster_view(world.ctx)[1]] == ["new"]


def test_a_cluster_credential_names_its_cluster_and_nothing_else_passes(world: World) -> None:
    from keyplane.domain.errors import Unauthenticated

    secret = feed.issue_credential(world.ctx, cluster=EU)
    assert feed.credential_is_valid(world.ctx, secret)
    assert not feed.credential_is_valid(
        world.ctx, secret[:-1] + ("a" if secret[-1] != "a" else "b")
    )
    assert feed.authenticate_gateway(world.ctx, f"Bearer {secret}") == EU
    assert feed.authenticate_gateway(world.ctx, f"  bearer   {secret}  ") == EU
    refused = {
        None: "unauthenticated:no-credentials",
        "": "unauthenticated:no-credentials",
        f"Basic {secret}": "unauthenticated:bad-credentials",
        secret: "unauthenticated:bad-credentials",
        "Bearer " + secret.replace("kpgw-", "xai-", 1): "unauthenticated:bad-credentials",
        "Bearer " + secret[:-4] + "0000": "unauthenticated:bad-credentials",
    }
    for header, code in refused.items():
        with pytest.raises(Unauthenticated) as caught:
            feed.authenticate_gateway(world.ctx, header)
        assert caught.value.code == code, header


def test_a_credential_speaks_for_its_gateway_and_that_gateways_workers_only(world: World) -> None:
    from keyplane.domain.errors import PermissionDenied
    from keyplane.propagation.wire import bound_identity, worker_id

    secret = feed.issue_credential(world.ctx, cluster=US)
    gateway = "us-east-1/host-1a2b"
    assert worker_id(gateway, 0) == gateway
    assert bound_identity(worker_id(gateway, 3)) == gateway
    assert bound_identity(gateway + "/worker-x") == gateway + "/worker-x"
    # A worker may speak first: the credential binds to its gateway, not to the worker.
    for worker in (1, 0, 2):
        name = worker_id(gateway, worker)
        assert feed.authenticate_gateway_as(world.ctx, f"Bearer {secret}", name) == US
        world.ack(name, US, feed.current_revision(world.ctx))
    for other in ("us-east-1/host-ffff", "us-east-1/host-ffff/worker-1", gateway + "x/worker-1"):
        with pytest.raises(PermissionDenied):
            feed.authenticate_gateway_as(world.ctx, f"Bearer {secret}", other)


def short_window(world: World, seconds: float) -> None:
    world.ctx = Context(
        db=world.db,
        server_secret=world.ctx.server_secret,
        clock=world.clock,
        gateway_liveness=timedelta(seconds=seconds),
    )


@pytest.mark.parametrize(("window", "early"), [(10.0, 1.9), (1.0, 0.24)])
def test_an_ack_within_the_refresh_interval_is_not_written(
    world: World, window: float, early: float
) -> None:
    """The refresh interval is min(2 s, window / 4): a same-revision ack sooner than that changes
    nothing, so the gateway's last contact stays the first ack's."""
    short_window(world, window)
    key_id, revision = world.create()
    world.ack("us-a", US, revision)
    world.clock.advance(early)
    world.ack("us-a", US, revision)  # thinned out: not written
    world.clock.advance(window - early)
    assert world.status(key_id)[US] is False


def test_an_ack_past_the_refresh_interval_is_written(world: World) -> None:
    short_window(world, 1.0)
    key_id, revision = world.create()
    world.ack("us-a", US, revision)
    world.clock.advance(0.26)
    world.ack("us-a", US, revision)  # past a quarter window: written
    world.clock.advance(0.74)
    assert world.status(key_id)[US] is True
    _, rows = feed.cluster_view(world.ctx)
    assert rows[0].last_seen == world.clock.now() - timedelta(seconds=0.74)


def test_a_deleted_key_answers_within_the_tombstone_window_only(world: World) -> None:
    from keyplane.services.keys import TOMBSTONE_WINDOW

    key_id, _ = world.create()
    keys.delete_key(world.ctx, principal=world.principal, api_key_id=key_id)
    revision = feed.current_revision(world.ctx)
    world.ack("us-a", US, revision)
    assert world.status(key_id)[US] is True  # the delete has arrived
    world.clock.advance(TOMBSTONE_WINDOW.total_seconds() + 1)
    with pytest.raises(NotFound) as caught:
        world.status(key_id)
    assert str(caught.value) == "Cannot find API key"


def test_a_follower_behind_a_compacted_log_is_told_to_take_a_snapshot(world: World) -> None:
    for _ in range(3):
        world.create()
    current = feed.current_revision(world.ctx)
    feed.compact(world.ctx, keep=1)
    answer = feed.read_changes(world.ctx, after=1, limit=10)
    assert (answer.snapshot_required, answer.revision, answer.changes) == (True, current, [])


# -- the feed's routes: ``after`` is the ack, believed only up to what was served ----------------


class Feed:
    """The feed router on ``world``'s store, in process, as one gateway of ``cluster`` calls it."""

    def __init__(self, world: World, cluster: str = US) -> None:
        app = FastAPI()
        control_errors.install(app)
        app.include_router(feed_router(world.ctx, ChangeNotifier()))
        self.http = TestClient(app)
        self.world = world
        self.credential = feed.issue_credential(world.ctx, cluster=cluster)

    def headers(self, gateway: str | None = "us-a") -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.credential}"}
        if gateway is not None:
            headers[GATEWAY_HEADER] = gateway
        return headers

    def changes(self, after: int, gateway: str = "us-a", **params: float) -> dict[str, Any]:
        answer = self.http.get(
            CHANGES_PATH,
            params={"after": after, "wait": 0, **params},
            headers=self.headers(gateway),
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert isinstance(body, dict)
        return body

    def applied(self, gateway: str = "us-a") -> int:
        rows = {r.gateway_id: r for r in feed.cluster_view(self.world.ctx)[1]}
        return rows[gateway].applied_revision


@pytest.fixture
def gateway_feed(world: World) -> Iterator[Feed]:
    f = Feed(world)
    with f.http:
        yield f


def test_the_changes_route_answers_what_comes_after_and_acks_only_what_was_applied(
    world: World, gateway_feed: Feed
) -> None:
    first, r1 = world.create()
    second, r2 = world.create()
    answer = gateway_feed.changes(0)
    assert answer["revision"] == r2
    assert answer["snapshotRequired"] is False
    assert [c["revision"] for c in answer["changes"]] == list(range(1, r2 + 1))
    assert {c["op"] for c in answer["changes"]} == {"upsert"}
    assert answer["changes"][-1]["view"]["apiKeyId"] == second
    # Sent everything through r2, applied nothing yet: not propagated.
    assert gateway_feed.applied() == 0
    assert world.status(first)[US] is False
    gateway_feed.changes(r1)  # applied through the first key
    assert (world.status(first)[US], world.status(second)[US]) == (True, False)
    assert gateway_feed.applied() == r1
    level = gateway_feed.changes(r2)
    assert (level["revision"], level["changes"], level["snapshotRequired"]) == (r2, [], False)
    assert (world.status(first)[US], world.status(second)[US]) == (True, True)


def test_a_batch_limit_bounds_what_is_sent_and_so_what_an_ack_may_claim(
    world: World, gateway_feed: Feed
) -> None:
    key, _ = world.create()
    _, r2 = world.create()
    answer = gateway_feed.changes(0, limit=1)
    assert (answer["revision"], [c["revision"] for c in answer["changes"]]) == (1, [1])
    gateway_feed.changes(r2, limit=1)  # claims more than it was sent: not believed
    assert gateway_feed.applied() == 0
    assert world.status(key)[US] is False
    gateway_feed.changes(r2)  # it was sent the head by the last answer: now believed
    assert gateway_feed.applied() == r2


def test_the_snapshot_streams_the_head_then_every_key_and_counts_as_sent(
    world: World, gateway_feed: Feed
) -> None:
    first, _ = world.create()
    second, head = world.create()
    answer = gateway_feed.http.get(SNAPSHOT_PATH, headers=gateway_feed.headers())
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/x-ndjson"
    assert answer.text.endswith("}\n")
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert lines[0] == {"revision": head}
    assert [line["apiKeyId"] for line in lines[1:-1]] == sorted([first, second])  # in id order
    assert lines[-1] == {"end": 2}  # a complete snapshot says how many keys it sent
    gateway_feed.changes(head)  # the snapshot sent the head: the ack is believed at once
    assert gateway_feed.applied() == head
    assert world.status(first)[US] is True


def test_a_snapshot_as_rows_holds_the_views_and_resumes_after_an_id(
    world: World, gateway_feed: Feed
) -> None:
    made = [world.create() for _ in range(3)]
    head = made[-1][1]
    views = {str(v["apiKeyId"]): v for v in list(feed.snapshot_lines(world.ctx))[1:]}
    ids = sorted(views)
    cases: list[tuple[str | None, list[str]]] = [(None, ids), (ids[0], ids[1:])]
    for after, expected in cases:
        params = {"format": ROWS} if after is None else {"format": ROWS, "after": after}
        answer = gateway_feed.http.get(SNAPSHOT_PATH, params=params, headers=gateway_feed.headers())
        lines = [json.loads(line) for line in answer.text.splitlines()]
        assert lines[0] == {"revision": head}
        assert lines[-1] == {"end": len(expected)}
        assert [row_to_view(row) for row in lines[1:-1]] == [views[i] for i in expected]


def test_an_empty_store_snapshots_its_revision_and_its_end(world: World) -> None:
    gateway_feed = Feed(world)
    with gateway_feed.http:
        answer = gateway_feed.http.get(SNAPSHOT_PATH, headers=gateway_feed.headers())
    assert answer.text == '{"revision":0}\n{"end":0}\n'


def test_a_follower_told_to_snapshot_has_been_sent_nothing(
    world: World, gateway_feed: Feed
) -> None:
    key, head = world.create()
    ahead = gateway_feed.changes(head + 3)  # it knows revisions this store never made
    assert (ahead["snapshotRequired"], ahead["revision"], ahead["changes"]) == (True, head, [])
    gateway_feed.changes(head)  # still sent nothing: its ack is not believed
    assert gateway_feed.applied() == 0
    assert world.status(key)[US] is False


def test_the_snapshot_and_changes_refuse_a_missing_or_malformed_gateway_id(
    gateway_feed: Feed,
) -> None:
    for path in (SNAPSHOT_PATH, CHANGES_PATH):
        for gateway in (None, "", "g" * 129, "tab\there"):
            answer = gateway_feed.http.get(
                path, params={"after": 0, "wait": 0}, headers=gateway_feed.headers(gateway)
            )
            assert answer.status_code == 400, (path, gateway)
            assert answer.json() == {
                "code": "invalid-argument",
                "error": f"{GATEWAY_HEADER}: a gateway id of 1-128 characters is required",
            }
        # Who is asking comes first: without a credential, a missing id is a 401.
        anonymous = gateway_feed.http.get(path, params={"after": 0, "wait": 0})
        assert anonymous.status_code == 401
        assert anonymous.json()["code"] == "unauthenticated:no-credentials"
    longest = gateway_feed.changes(0, gateway="g" * 128)
    assert longest["revision"] == 0


def test_the_changes_route_bounds_its_query(gateway_feed: Feed) -> None:
    for params in (
        {"after": -1},
        {"after": 0, "wait": -1},
        {"after": 0, "wait": MAX_WAIT_SECONDS + 1},
        {"after": 0, "limit": 0},
        {"after": 0, "limit": MAX_BATCH + 1},
        {},
    ):
        answer = gateway_feed.http.get(CHANGES_PATH, params=params, headers=gateway_feed.headers())
        assert answer.status_code == 400, params
    assert gateway_feed.changes(0, limit=MAX_BATCH)["revision"] == 0


def test_a_credential_speaks_for_one_gateway_while_that_gateway_lives(world: World) -> None:
    secret = feed.issue_credential(world.ctx, cluster=US)
    bearer = f"Bearer {secret}"
    assert feed.authenticate_gateway_as(world.ctx, bearer, "us-a") == US  # first use binds it
    assert feed.authenticate_gateway_as(world.ctx, bearer, "us-a") == US
    _, revision = world.create()
    world.ack("us-a", US, revision)
    world.clock.advance(LIVENESS)
    with pytest.raises(PermissionDenied) as caught:
        feed.authenticate_gateway_as(world.ctx, bearer, "us-b")
    assert caught.value.message == (
        "This feed credential belongs to another gateway; issue one per gateway."
    )
    world.clock.advance(0.001)  # us-a silent for longer than the window: the credential moves
    assert feed.authenticate_gateway_as(world.ctx, bearer, "us-b") == US
    assert [r.gateway_id for r in feed.cluster_view(world.ctx)[1]] == []  # us-a forgotten
    world.ack("us-b", US, revision)
    with pytest.raises(PermissionDenied):
        feed.authenticate_gateway_as(world.ctx, bearer, "us-a")  # us-b is live now
    other = f"Bearer {feed.issue_credential(world.ctx, cluster=US)}"
    with pytest.raises(PermissionDenied):
        feed.authenticate_gateway_as(world.ctx, other, "us-b")  # one id, one credential


def test_a_gateway_is_forgotten_only_once_silent_for_longer_than_a_day(world: World) -> None:
    _, revision = world.create()
    world.ack("us-a", US, revision)
    world.clock.advance(feed.FORGET_AFTER.total_seconds())
    feed.compact(world.ctx, keep=10)
    assert [r.gateway_id for r in feed.cluster_view(world.ctx)[1]] == ["us-a"]
    world.clock.advance(0.001)
    feed.compact(world.ctx, keep=10)
    assert feed.cluster_view(world.ctx)[1] == []


def test_a_level_follower_waits_then_hears_nothing_new(world: World, gateway_feed: Feed) -> None:
    _, head = world.create()
    answer = gateway_feed.changes(head, wait=0.05)  # nothing comes within the wait
    assert (answer["revision"], answer["changes"], answer["snapshotRequired"]) == (head, [], False)


def test_the_feed_is_not_part_of_the_public_api_document(gateway_feed: Feed) -> None:
    paths = gateway_feed.http.get("/openapi.json").json()["paths"]
    assert SNAPSHOT_PATH not in paths
    assert CHANGES_PATH not in paths


def test_an_unknown_credential_registers_no_gateway(world: World) -> None:
    from keyplane.domain.errors import Unauthenticated

    stranger = f"Bearer {keysecrets.generate_secret('kpgw-')}"
    with pytest.raises(Unauthenticated) as caught:
        feed.authenticate_gateway_as(world.ctx, stranger, "us-a")
    assert caught.value.code == "unauthenticated:bad-credentials"
    assert feed.cluster_view(world.ctx)[1] == []


def test_the_snapshot_as_views_is_the_head_then_each_key_as_its_last_change_sent_it(
    world: World,
) -> None:
    created, _ = keys.create_key(
        world.ctx,
        principal=world.principal,
        team_id=world.principal.team_id,
        spec=keys.parse_new_key({"name": "acl", "acls": ["api-key:endpoint:chat"]}),
    )
    assert created is not None
    _, head = world.create()
    lines = list(feed.snapshot_lines(world.ctx))
    assert lines[0] == {"revision": head}
    changes = feed.read_changes(world.ctx, after=0, limit=10).changes
    assert {v["apiKeyId"]: v for v in lines[1:]} == {c.view["apiKeyId"]: c.view for c in changes}
    views = {v["apiKeyId"]: v for v in lines[1:]}
    assert views[created.key.api_key_id]["acls"] == ["api-key:endpoint:chat"]  # a list again


def test_a_snapshot_resumed_after_a_key_holds_only_the_keys_after_it(world: World) -> None:
    ids = sorted(world.create()[0] for _ in range(3))
    head = feed.current_revision(world.ctx)
    rest = list(feed.snapshot_rows(world.ctx, after=ids[0]))
    assert rest[0] == head
    assert [row[0] for row in rest[1:] if isinstance(row, list)] == ids[1:]  # apiKeyId first


def test_each_credential_of_a_cluster_binds_its_own_gateway(world: World) -> None:
    first = f"Bearer {feed.issue_credential(world.ctx, cluster=US)}"
    second = f"Bearer {feed.issue_credential(world.ctx, cluster=US)}"
    assert feed.authenticate_gateway_as(world.ctx, first, "us-a") == US
    # Another credential's binding is no objection: only one bound to the same id would be.
    assert feed.authenticate_gateway_as(world.ctx, second, "us-b") == US
    assert feed.authenticate_gateway_as(world.ctx, first, "us-a") == US


def test_the_cluster_view_lists_gateways_by_cluster_then_id(world: World) -> None:
    _, revision = world.create()
    for gateway, cluster in (("z-us", US), ("a-us", US), ("m-eu", EU)):
        world.ack(gateway, cluster, revision)
    rows = feed.cluster_view(world.ctx)[1]
    assert [(r.cluster, r.gateway_id) for r in rows] == [(EU, "m-eu"), (US, "a-us"), (US, "z-us")]


def test_an_ack_beyond_what_was_served_changes_nothing_recorded(world: World) -> None:
    _, revision = world.create()
    # Never served anything: not even revision 1 is believed.
    world.acks.ack(world.ctx, gateway_id="us-new", cluster=US, revision=1)
    assert {r.gateway_id: r.applied_revision for r in feed.cluster_view(world.ctx)[1]} == {
        "us-new": 0
    }
    world.ack("us-a", US, revision)
    world.acks.ack(world.ctx, gateway_id="us-a", cluster=US, revision=revision + 5)
    # The invented revision is not believed, and what it had applied still stands.
    assert {r.gateway_id: r.applied_revision for r in feed.cluster_view(world.ctx)[1]}["us-a"] == (
        revision
    )


def test_a_snapshot_registers_its_gateway_with_nothing_applied_yet(
    world: World, gateway_feed: Feed
) -> None:
    world.create()
    answer = gateway_feed.http.get(SNAPSHOT_PATH, headers=gateway_feed.headers())
    assert answer.status_code == 200
    assert gateway_feed.applied() == 0  # sent, not yet acknowledged


def test_a_gateway_whose_credential_it_already_holds_is_bound_again(world: World) -> None:
    # Two first requests of one gateway both read the credential unbound; the first to write
    # binds it, and the second's bind then finds it held by that gateway - its own - and passes,
    # live as that gateway is. This is the second write, made directly with the state arranged.
    bearer = f"Bearer {feed.issue_credential(world.ctx, cluster=US)}"
    assert feed.authenticate_gateway_as(world.ctx, bearer, "us-a") == US  # the first write
    _, revision = world.create()
    world.ack("us-a", US, revision)  # us-a is live
    digest = keysecrets.digest(bearer.removeprefix("Bearer "))
    silent_before = world.clock.now() - world.ctx.gateway_liveness
    with world.ctx.db.write() as conn:
        assert gateway_rows.bind_credential(
            conn, digest=digest, gateway_id="us-a", silent_before=silent_before
        )
        assert not gateway_rows.bind_credential(
            conn, digest=digest, gateway_id="us-b", silent_before=silent_before
        )
    assert [r.gateway_id for r in feed.cluster_view(world.ctx)[1]] == ["us-a"]


# -- the long poll, driven through raw ASGI: a commit during the wait, a hang-up mid-poll --------


class LongPoll:
    """One ``GET /changes`` long poll on the feed router, called as a server would call it: the
    request's body first, then ``receive`` blocks until the test hangs up (once); ``listening``
    is set when the route starts watching for that hang-up, i.e. while it waits."""

    def __init__(self, world: World, after: int) -> None:
        # Told of the head as the control plane's start-up tells it, on the test's event loop.
        self.notifier = ChangeNotifier()
        self.notifier.bind(asyncio.get_running_loop(), after)
        app = FastAPI()
        control_errors.install(app)
        app.include_router(feed_router(world.ctx, self.notifier))
        credential = feed.issue_credential(world.ctx, cluster=US)
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": CHANGES_PATH,
            "raw_path": CHANGES_PATH.encode(),
            "root_path": "",
            "query_string": f"after={after}&wait={MAX_WAIT_SECONDS}".encode(),
            "headers": [
                (b"authorization", f"Bearer {credential}".encode()),
                (GATEWAY_HEADER.lower().encode(), b"us-a"),
            ],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 80),
        }
        self.app = app
        self.listening = asyncio.Event()
        self.hang_up = asyncio.Event()
        self.never = asyncio.Event()
        self.received = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        self.received += 1
        if self.received == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        self.listening.set()
        if self.received == 2:
            await self.hang_up.wait()
            return {"type": "http.disconnect"}
        await self.never.wait()  # a server says "gone" once; nothing more comes
        raise AssertionError("unreachable")

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def start_waiting(self) -> asyncio.Task[None]:
        """Start the poll and wait (10 s at most) until it waits; fail if it answered first."""
        task = asyncio.ensure_future(self.app(self.scope, self.receive, self.send))
        listening = asyncio.ensure_future(self.listening.wait())
        await asyncio.wait({listening, task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        assert self.listening.is_set(), "the poll answered without waiting"
        return task

    async def answer(self, task: asyncio.Task[None]) -> dict[str, Any]:
        """The poll's answer, which must come within 10 s."""
        await asyncio.wait({task}, timeout=10)
        if not task.done():
            task.cancel()
            raise AssertionError("the poll did not answer")
        assert task.exception() is None
        assert self.sent[0]["status"] == 200
        body = json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))
        assert isinstance(body, dict)
        return body


async def test_a_change_committed_during_the_long_poll_is_answered_at_once(world: World) -> None:
    _, head = world.create()
    poll = LongPoll(world, head)
    task = await poll.start_waiting()  # nothing after ``head``: the poll waits
    key_id, revision = world.create()
    poll.notifier.notify(revision)
    body = await poll.answer(task)
    assert body["revision"] == revision
    assert [(c["revision"], c["view"]["apiKeyId"]) for c in body["changes"]] == [(revision, key_id)]
    assert poll.received == 2  # the gateway never hung up


async def test_a_gateway_hanging_up_mid_poll_ends_the_wait_with_nothing_new(world: World) -> None:
    _, head = world.create()
    poll = LongPoll(world, head)
    task = await poll.start_waiting()
    poll.hang_up.set()  # well within the 30 s wait, and no change commits
    body = await poll.answer(task)
    assert (body["revision"], body["changes"], body["snapshotRequired"]) == (head, [], False)
