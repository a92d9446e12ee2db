"""``icPropagation`` means *applied*, on real processes: a follower that polls the feed (and is
sent the change) but never advances its applied revision keeps the key ``false``; a cluster whose
gateways fall silent past the liveness window reads ``false`` although they had applied it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support.management import connect
from tests.support.procs import Deployment, admin_context, wait_for

US, EU = "us-east-1", "eu-west-1"


def status(client: httpx2.Client, key_id: str) -> dict[str, bool]:
    r = client.get(f"/auth/api-keys/{key_id}/propagation")
    assert r.status_code == 200, r.text
    raw: dict[str, bool] = r.json()["icPropagation"]
    return {name: raw[f"{name}.api.test"] for name in (US, EU)}


def create(client: httpx2.Client, team: str) -> tuple[str, str]:
    r = client.post(f"/auth/teams/{team}/api-keys", json={"name": "k"})
    assert r.status_code == 200, r.text
    return r.json()["apiKeyId"], r.json()["apiKey"]


class FakeFollower:
    """A gateway that talks the feed protocol but applies nothing: it always asks for what comes
    after revision ``applied``."""

    def __init__(self, dep: Deployment, cluster: str) -> None:
        from keyplane.propagation import feed

        with admin_context(dep) as ctx:
            self.credential = feed.issue_credential(ctx, cluster=cluster)
        self.url = dep.control_url
        self.applied = 0

    def poll(self) -> dict[str, Any]:
        r = httpx2.get(
            self.url + "/internal/v1/changes",
            params={"after": self.applied, "wait": 0},
            headers={
                "Authorization": f"Bearer {self.credential}",
                "x-keyplane-gateway": "fake-follower",
            },
            timeout=10,
        )
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer


@pytest.fixture
def control_and_us(deployment: Deployment) -> Deployment:
    deployment.start_control()
    deployment.start_gateway(US)
    return deployment


def test_a_follower_that_never_applies_keeps_the_key_false(control_and_us: Deployment) -> None:
    dep = control_and_us
    team, mgmt = dep.create_team("acme")
    fake = FakeFollower(dep, EU)
    with connect(dep.control_url, mgmt) as client:
        key_id, _ = create(client, team)
        wait_for(lambda: status(client, key_id)[US], what="the real gateway applied it")
        # The fake is sent the change, again and again, and stays live by polling ...
        for _ in range(5):
            answer = fake.poll()
            assert answer["changes"], "the follower was sent the change"
            assert any(c["view"]["apiKeyId"] == key_id for c in answer["changes"])
            assert status(client, key_id) == {US: True, EU: False}
        # ... and the moment it reports having applied the revision, the cluster reads true.
        fake.applied = int(answer["revision"])
        fake.poll()
        wait_for(lambda: status(client, key_id) == {US: True, EU: True}, what="applied: true")
        # A newer change is false again until applied.
        second_id, _ = create(client, team)
        wait_for(lambda: status(client, second_id)[US], what="second key on the real gateway")
        assert fake.poll()["changes"]
        assert status(client, second_id) == {US: True, EU: False}


@pytest.fixture
def short_liveness(tmp_path: Path) -> Iterator[Deployment]:
    dep = Deployment(tmp_path, top_config="feed_poll_seconds = 0.2\ngateway_liveness_seconds = 1.0")
    dep.start_control()
    dep.start_gateway(US)
    dep.start_gateway(EU)
    yield dep
    dep.stop_all()


def test_a_cluster_silent_past_the_liveness_window_reads_false(
    short_liveness: Deployment,
) -> None:
    dep = short_liveness
    team, mgmt = dep.create_team("acme")
    eu = next(p for p in dep.procs if p.name == f"gateway-{EU}-0")
    with connect(dep.control_url, mgmt) as client:
        key_id, secret = create(client, team)
        wait_for(lambda: status(client, key_id) == {US: True, EU: True}, what="everywhere")
        eu.kill()  # it had applied the key; now it is silent
        wait_for(lambda: status(client, key_id) == {US: True, EU: False}, what="eu goes false")
        # The live cluster stays true: only silence past the window made eu false.
        eu.start()
        wait_for(lambda: status(client, key_id) == {US: True, EU: True}, what="eu back")
    r = httpx2.get(
        dep.gateway_url(EU) + "/v1/api-key", headers={"Authorization": f"Bearer {secret}"}
    )
    assert r.status_code == 200
