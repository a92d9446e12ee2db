"""Issue #14.6: a feed credential cannot forge acknowledgements.

An ack counts only for the one gateway a credential is bound to (registered on its first poll),
only up to a revision the control plane has served that gateway, and never above the head; and
``keyplane admin clusters`` lists registered gateways only.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import httpx2
import pytest

from tests.support.management import connect
from tests.support.procs import PYTHON, Deployment, admin_context, wait_for

US, EU = "us-east-1", "eu-west-1"
HOSTS = {US: f"{US}.api.test", EU: f"{EU}.api.test"}


@pytest.fixture
def running(deployment: Deployment) -> Deployment:
    deployment.start_control()
    deployment.start_gateway(US)
    return deployment


def _credential(dep: Deployment, cluster: str) -> str:
    from keyplane.propagation import feed

    with admin_context(dep) as ctx:
        return str(feed.issue_credential(ctx, cluster=cluster))


def _poll(dep: Deployment, credential: str, gateway: str, after: int, **params: Any) -> Any:
    return httpx2.get(
        dep.control_url + "/internal/v1/changes",
        params={"after": after, "wait": 0, **params},
        headers={"Authorization": f"Bearer {credential}", "x-keyplane-gateway": gateway},
        timeout=10.0,
    )


def _status(client: httpx2.Client, key_id: str) -> dict[str, bool]:
    response = client.get(f"/auth/api-keys/{key_id}/propagation")
    assert response.status_code == 200, response.text
    answer: dict[str, bool] = response.json()["icPropagation"]
    return {cluster: answer[host] for cluster, host in HOSTS.items()}


def _clusters(dep: Deployment) -> list[dict[str, Any]]:
    out = subprocess.run(
        [PYTHON, "-m", "keyplane.cli", "admin", "clusters", "--json"],
        env=dep.env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def _new_key(dep: Deployment, client: httpx2.Client, team: str) -> str:
    response = client.post(f"/auth/teams/{team}/api-keys", json={"name": "k"})
    assert response.status_code == 200, response.text
    key_id: str = response.json()["apiKeyId"]
    wait_for(lambda: _status(client, key_id)[US], what="the real gateway applied it")
    return key_id


def test_acks_beyond_the_head_or_what_was_served_are_not_believed(running: Deployment) -> None:
    dep = running
    team, mgmt = dep.create_team("acks")
    with connect(dep.control_url, mgmt) as client:
        for _ in range(3):
            key_id = _new_key(dep, client, team)
        forger = _credential(dep, EU)
        # Far beyond the head: the answer is "take a snapshot", and the ack applies nothing.
        assert _poll(dep, forger, "eu-forger", 99_999_999).json()["snapshotRequired"] is True
        assert _status(client, key_id) == {US: True, EU: False}
        # Served one change only, then claiming the head: not believed either.
        first = _poll(dep, forger, "eu-forger", 0, limit=1).json()
        assert len(first["changes"]) == 1
        head = _poll(dep, forger, "eu-forger", 1, limit=1).json()["revision"]
        assert _poll(dep, forger, "eu-forger", 50).json()["snapshotRequired"] is True
        assert _poll(dep, forger, "eu-forger", head + 1).status_code == 200
        assert _status(client, key_id) == {US: True, EU: False}
        rows = {r["gateway"]: r for r in _clusters(dep)}
        assert rows["eu-forger"]["applied_revision"] <= 1


def test_a_credential_speaks_for_one_gateway(running: Deployment) -> None:
    dep = running
    team, mgmt = dep.create_team("binding")
    with connect(dep.control_url, mgmt) as client:
        key_id = _new_key(dep, client, team)
        # The real gateway's own credential, stolen: other ids are refused while it is live.
        stolen = dep.procs[1].env["KEYPLANE_GATEWAY_CREDENTIAL"]
        for invented in ("us-invented-1", "us-invented-2"):
            forged = _poll(dep, stolen, invented, 0)
            assert forged.status_code == 403, forged.text
            assert set(forged.json()) == {"code", "error"}
        assert _status(client, key_id) == {US: True, EU: False}
        # A fresh credential registers one id; a second id on it is refused.
        fresh = _credential(dep, EU)
        assert _poll(dep, fresh, "eu-one", 0).status_code == 200
        assert _poll(dep, fresh, "eu-two", 0).status_code == 403
    listed = {r["gateway"] for r in _clusters(dep)}
    assert "eu-one" in listed
    assert not listed & {"us-invented-1", "us-invented-2", "eu-two"}
    assert any(g.startswith(f"{US}/") for g in listed)
