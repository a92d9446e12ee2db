"""Crash matrix: creates, updates, rotations and deletes acknowledged before a SIGKILL survive it,
and a change in flight at the kill either happened whole or not at all — on SQLite and on
PostgreSQL, killing the control plane, or (PostgreSQL) the database server.

Writers run every kind of change back to back, so the kill lands wherever it lands: the checks hold
for any boundary, not a lucky one. Each case runs several kill/restart rounds. After each restart
the store is read in process (a snapshot and the whole change log, one consistent view each):

- every acknowledged change is there, with exactly the acknowledged values;
- a change in flight is either wholly there or wholly absent (a key has the old or the new qpm,
  the old or the rotated secret; an unacknowledged create exists whole or not at all);
- the change log has no gap, and for every key its last logged change equals the stored key (a
  deleted key's last change is its delete): no mutation committed without its log entry or back.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx2
import pytest

from tests.support.management import connect
from tests.support.postgres import PostgresServer, require_postgres
from tests.support.procs import Deployment, Proc, admin_context, wait_for

pytestmark = pytest.mark.slow

WRITERS = 3
ROUNDS = 2
#: Acknowledged changes of every kind each round must see before its kill.
PER_KIND = 4
KINDS = ("create", "update", "rotate", "delete")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class Tracked:
    """What the client was told about one key, and the change in flight at the kill, if any."""

    key_id: str
    name: str
    secret: str
    qpm: int | None = None
    deleted: bool = False
    pending: tuple[str, Any] | None = None


@dataclass(eq=False)
class Writer(threading.Thread):
    url: str
    team: str
    management: str
    deadline: float
    tracked: list[Tracked] = field(default_factory=list)
    pending_create: str | None = None
    acked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    error: str | None = None
    #: Set once the round's kill is done: finish the key in hand, start no other.
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, daemon=True)

    def run(self) -> None:
        with connect(self.url, self.management) as client:
            for n in itertools.count():
                if self.done.is_set() or time.monotonic() > self.deadline:
                    return
                if not self._cycle(client, n):
                    return

    def _send(
        self, client: httpx2.Client, method: str, path: str, body: Any = None
    ) -> httpx2.Response | None:
        """The answer, or None when the server went away (or failed) before acknowledging."""
        try:
            r = client.request(method, path, json=body)
        except httpx2.TransportError:
            return None
        if r.status_code >= 500:
            return None  # not acknowledged: its outcome is unknown, like a lost connection
        if r.status_code != 200:
            self.error = f"{method} {path}: {r.status_code} {r.text}"
            return None
        return r

    def _cycle(self, client: httpx2.Client, n: int) -> bool:
        """One key's life: create, two updates, a rotation, a delete. False: stop."""
        name = f"crash-{uuid.uuid4()}"
        self.pending_create = name
        r = self._send(client, "POST", f"/auth/teams/{self.team}/api-keys", {"name": name})
        if r is None:
            return False
        self.pending_create = None
        key = Tracked(r.json()["apiKeyId"], name, r.json()["apiKey"])
        self.tracked.append(key)
        self.acked["create"] += 1
        path = f"/auth/api-keys/{key.key_id}"
        for qpm in (n * 10 + 1, n * 10 + 2):
            key.pending = ("update", qpm)
            body = {"apiKey": {"qpm": qpm}, "fieldMask": "qpm"}
            if self._send(client, "PUT", path, body) is None:
                return False
            key.qpm, key.pending = qpm, None
            self.acked["update"] += 1
        key.pending = ("rotate", None)
        r = self._send(client, "POST", path + "/rotate", {})
        if r is None:
            return False
        key.secret, key.pending = r.json()["apiKey"], None
        self.acked["rotate"] += 1
        if n % 2:  # every other key is kept, so live keys are checked too
            return True
        key.pending = ("delete", None)
        if self._send(client, "DELETE", path) is None:
            return False
        key.deleted, key.pending = True, None
        self.acked["delete"] += 1
        return True


@dataclass
class Case:
    dep: Deployment
    control: Proc
    pg: PostgresServer | None
    victim: str


@pytest.fixture(params=["sqlite/control", "postgres/control", "postgres/postgres"])
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Case]:
    backend, victim = str(request.param).split("/")
    pg = PostgresServer(require_postgres()).start() if backend == "postgres" else None
    top = f'database_url = "{pg.create_database("keyplane")}"' if pg else ""
    dep = Deployment(tmp_path_factory.mktemp("crash"), clusters=["us-east-1"], top_config=top)
    try:
        yield Case(dep, dep.start_control(), pg, victim)
    finally:
        dep.stop_all()
        if pg is not None:
            pg.stop()


def store_view(dep: Deployment) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The snapshot (key id -> view) and, per key id, its last change; the log checked gap-free."""
    from keyplane.propagation import feed

    with admin_context(dep) as ctx:
        lines = list(feed.snapshot_lines(ctx))
        answer = feed.read_changes(ctx, after=0, limit=10**9)
    current = int(lines[0]["revision"])  # type: ignore[call-overload]
    revisions = [c.revision for c in answer.changes]
    assert revisions == list(range(1, current + 1)), "the change log has a gap"
    last: dict[str, Any] = {}
    for change in answer.changes:
        last[str(change.view["apiKeyId"])] = change
    return {str(v["apiKeyId"]): v for v in lines[1:]}, last


def check(dep: Deployment, team: str, writers: list[Writer]) -> None:
    snapshot, last = store_view(dep)
    # The log and the store agree on every key: no commit without its log entry, or back.
    for key_id, change in last.items():
        if change.op == "delete":
            assert key_id not in snapshot
        else:
            assert snapshot[key_id] == change.view
    assert set(snapshot) <= set(last)
    ours = {k: v for k, v in snapshot.items() if v["teamId"] == team}
    expected: set[str] = set()
    for writer in writers:
        assert writer.error is None, writer.error
        for key in writer.tracked:
            view = ours.get(key.key_id)
            kind, value = key.pending or (None, None)
            if key.deleted or kind == "delete":
                assert view is None or kind == "delete", f"acknowledged delete undone: {key}"
                if view is None:
                    continue
            assert view is not None, f"acknowledged key lost: {key}"
            expected.add(key.key_id)
            assert view["name"] == key.name
            qpms = {key.qpm, value} if kind == "update" else {key.qpm}
            assert view["qpm"] in qpms, (view["qpm"], key)
            digests = [s["digest"] for s in view["secrets"]]
            if kind == "rotate":
                assert digest(key.secret) in digests[:2], (digests, key)
            else:
                assert digests[0] == digest(key.secret), "acknowledged secret not current"
        if writer.pending_create is not None:
            made = [k for k, v in ours.items() if v["name"] == writer.pending_create]
            assert len(made) <= 1
            expected.update(made)
    assert set(ours) == expected, "a key no one was told about"


def enough(writers: list[Writer]) -> bool:
    for w in writers:
        assert w.error is None, w.error
    return all(sum(w.acked[k] for w in writers) >= PER_KIND for k in KINDS)


def kill_and_restart(case: Case) -> None:
    if case.victim == "control":
        case.control.kill()
        case.control.start()
    else:
        assert case.pg is not None
        case.pg.kill()
        case.pg.restart()


def test_acknowledged_changes_survive_sigkill_and_nothing_half_exists(case: Case) -> None:
    team, management = case.dep.create_team("crash")
    writers_so_far: list[Writer] = []
    for _ in range(ROUNDS):
        writers = [
            Writer(case.dep.control_url, team, management, time.monotonic() + 60)
            for _ in range(WRITERS)
        ]
        for writer in writers:
            writer.start()

        wait_for(partial(enough, writers), timeout=60, what="every kind of change acknowledged")
        kill_and_restart(case)
        for writer in writers:
            writer.done.set()
        for writer in writers:
            writer.join(timeout=30)
            assert not writer.is_alive()
        writers_so_far += writers
        # The control plane answers again (after PostgreSQL's recovery, too) ...
        with connect(case.dep.control_url, management) as client:
            listing = f"/auth/teams/{team}/api-keys"
            wait_for(
                partial(lambda c, path: c.get(path).status_code == 200, client, listing),
                timeout=60,
                what="the control plane answering again",
            )
        # ... and the store holds exactly what was acknowledged, whole.
        check(case.dep, team, writers_so_far)
