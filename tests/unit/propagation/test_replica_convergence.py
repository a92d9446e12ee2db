"""Property: whatever sequence of key changes the control plane commits, a gateway replica fed
through the feed — with duplicated deliveries, restarts from its local file and a compacted log
forcing a snapshot — ends equal to the control plane's own view at the same revision.

In process (real SQLite files, the real feed and replica code), so hypothesis can try many runs.
"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyplane.domain.model import ManagementKey
from keyplane.gateway.replica import Change, Replica, ReplicaStore
from keyplane.propagation import feed
from keyplane.services import admin, keys
from keyplane.services.auth import Principal
from keyplane.services.context import Context
from keyplane.storage.db import Database

ops = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.integers(0, 100)),
        st.tuples(st.just("update"), st.integers(0, 1000)),
        st.tuples(st.just("rotate"), st.integers(0, 1000)),
        st.tuples(st.just("delete"), st.integers(0, 1000)),
        st.tuples(st.just("sync"), st.integers(1, 5)),
        st.tuples(st.just("duplicate"), st.integers(1, 5)),
        st.tuples(st.just("restart"), st.just(0)),
        st.tuples(st.just("compact"), st.integers(0, 3)),
    ),
    max_size=40,
)


def _world(root: Path) -> tuple[Context, Principal]:
    db = Database(f"sqlite:///{root / 'cp.db'}", pool_size=2)
    db.migrate()
    ctx = Context(db=db, server_secret=secrets.token_bytes(32))
    team = admin.create_team(ctx, name="t")
    mk = admin.create_management_key(ctx, team_id=team.team_id, name="m")
    key: ManagementKey = mk.key
    return ctx, Principal(key)


def _control_view(ctx: Context) -> tuple[int, dict[str, Any]]:
    lines = list(feed.snapshot_lines(ctx))
    revision = int(lines[0]["revision"])  # type: ignore[call-overload]
    return revision, {str(v["apiKeyId"]): v for v in lines[1:]}


class Follower:
    """What the gateway's sync loop does, minus HTTP: read changes after its revision, persist,
    apply; snapshot when told to."""

    def __init__(self, ctx: Context, path: Path) -> None:
        self.ctx = ctx
        self.path = path
        self.store = ReplicaStore(path)
        self.replica = Replica()
        self.store.load_into(self.replica)
        self.last_batch: list[Change] = []

    def sync(self, limit: int) -> None:
        answer = feed.read_changes(self.ctx, after=self.replica.revision, limit=limit)
        if answer.snapshot_required:
            revision, views = _control_view(self.ctx)
            self.store.save_snapshot(revision, views.values())
            self.replica.load(revision, list(views.values()))
            return
        batch = [Change(c.revision, c.op, c.view) for c in answer.changes]
        if batch:
            self.store.save_changes(batch, batch[-1].revision)
            self.replica.apply(batch)
        self.last_batch = batch

    def duplicate(self) -> None:
        # The same batch delivered again (a retried poll): must change nothing.
        before = self.replica.views()
        self.replica.apply(self.last_batch)
        assert self.replica.views() == before

    def restart(self) -> None:
        self.store.close()
        self.store = ReplicaStore(self.path)
        self.replica = Replica()
        self.store.load_into(self.replica)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops)
def test_replica_converges_to_the_control_plane_view(script: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ctx, principal = _world(root)
        follower = Follower(ctx, root / "gw" / "replica.db")
        live: list[str] = []
        for op, arg in script:
            if op == "create":
                created, _ = keys.create_key(
                    ctx,
                    principal=principal,
                    team_id=principal.team_id,
                    spec=keys.parse_new_key(
                        {"name": f"k{arg}", "qps": arg, "acls": ["api-key:endpoint:chat"]}
                    ),
                )
                assert created is not None
                live.append(created.key.api_key_id)
            elif op in ("update", "rotate", "delete") and live:
                key_id = live[arg % len(live)]
                if op == "update":
                    keys.update_key(
                        ctx,
                        principal=principal,
                        api_key_id=key_id,
                        patch={"qpm": arg, "disabled": arg % 2 == 0},
                        field_mask="qpm,disabled",
                    )
                elif op == "rotate":
                    keys.rotate_key(ctx, principal=principal, api_key_id=key_id, body={})
                else:
                    keys.delete_key(ctx, principal=principal, api_key_id=key_id)
                    live.remove(key_id)
            elif op == "sync":
                follower.sync(limit=arg)
            elif op == "duplicate":
                follower.duplicate()
            elif op == "restart":
                follower.restart()
            elif op == "compact":
                feed.compact(ctx, keep=arg)
        # Drain, then compare at the same revision.
        for _ in range(200):
            follower.sync(limit=7)
            if (
                feed.read_changes(ctx, after=follower.replica.revision, limit=1).revision
                == follower.replica.revision
            ):
                break
        revision, view = _control_view(ctx)
        assert follower.replica.revision == revision
        assert follower.replica.views() == view
        # ...and the durable copy says the same after one more restart.
        follower.restart()
        assert follower.replica.revision == revision
        assert follower.replica.views() == view
        follower.store.close()
        ctx.db.dispose()
