"""A control plane killed with SIGKILL mid-write loses nothing it answered 200 for, and its change
log has no gap: revisions 1..N, N being the revision counter."""

from __future__ import annotations

import threading
import time
import uuid

import httpx2
import pytest
from sqlalchemy import create_engine, text

from tests.support.management import connect
from tests.support.procs import Deployment, wait_for

WRITERS = 3
KILL_AFTER = 100


class Creator(threading.Thread):
    """Creates keys in a loop, recording each create that was answered 200, until the server
    stops answering (or a time bound passes)."""

    def __init__(self, url: str, team_id: str, secret: str, deadline: float) -> None:
        super().__init__(daemon=True)
        self.url, self.team_id, self.secret, self.deadline = url, team_id, secret, deadline
        self.confirmed: list[str] = []
        self.failed: BaseException | None = None

    def run(self) -> None:
        with connect(self.url, self.secret) as client:
            while time.monotonic() < self.deadline:
                try:
                    r = client.post(
                        f"/auth/teams/{self.team_id}/api-keys",
                        json={"name": f"crash {uuid.uuid4()}", "acls": ["api-key:model:*"]},
                    )
                except httpx2.TransportError:
                    return  # the server is gone: whatever was in flight is unknown, not confirmed
                if r.status_code != 200:
                    self.failed = AssertionError(f"{r.status_code}: {r.text}")
                    return
                self.confirmed.append(r.json()["apiKeyId"])


def change_log(dep: Deployment) -> tuple[list[int], int, set[str]]:
    """Revisions in the change log, the revision counter, and the key ids the log mentions;
    read from the database file (read-only), not through the server."""
    path = dep.data_dir / "keyplane.db"
    engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        with engine.connect() as conn:
            revisions = list(
                conn.execute(text("select revision from change_log order by revision")).scalars()
            )
            counter = conn.execute(text("select value from revision_counter")).scalar_one()
            ids = set(conn.execute(text("select api_key_id from change_log")).scalars())
    finally:
        engine.dispose()
    return revisions, int(counter), ids


@pytest.mark.slow
def test_sigkill_mid_writes_loses_no_confirmed_key_and_leaves_no_gap(
    deployment: Deployment,
) -> None:
    control = deployment.start_control()
    team_id, secret = deployment.create_team("crash")
    deadline = time.monotonic() + 30
    creators = [Creator(deployment.control_url, team_id, secret, deadline) for _ in range(WRITERS)]
    for creator in creators:
        creator.start()

    def confirmed() -> int:
        for creator in creators:
            if creator.failed:
                raise creator.failed
        return sum(len(c.confirmed) for c in creators)

    wait_for(lambda: confirmed() >= KILL_AFTER, timeout=30, what=f"{KILL_AFTER} creates")
    control.kill()  # SIGKILL: no shutdown, no flush, requests in flight
    for creator in creators:
        creator.join(timeout=15)
        assert not creator.is_alive()
        assert creator.failed is None, creator.failed
    answered = {key_id for c in creators for key_id in c.confirmed}
    assert len(answered) >= KILL_AFTER

    deployment.start_control()
    with connect(deployment.control_url, secret) as client:
        r = client.get(f"/auth/teams/{team_id}/api-keys")
        assert r.status_code == 200, r.text
        listed = {k["apiKeyId"] for k in r.json()["apiKeys"]}
        # And the restarted server still writes, after the last revision.
        after = client.post(f"/auth/teams/{team_id}/api-keys", json={"name": "after"})
        assert after.status_code == 200, after.text

    assert answered <= listed, f"{len(answered - listed)} keys answered 200 were lost"
    revisions, counter, logged = change_log(deployment)
    assert revisions == list(range(1, counter + 1)), "the change log has a gap"
    # One revision per committed create: those answered, and perhaps a few in flight at the kill.
    assert counter == len(listed) + 1
    assert logged == listed | {after.json()["apiKeyId"]}
