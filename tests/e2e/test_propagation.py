"""Propagation end to end: a control plane and two gateways as real processes on loopback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx2
import pytest

from tests.support.management import connect
from tests.support.procs import Deployment, wait_for

CLUSTERS = ("us-east-1", "eu-west-1")


@pytest.fixture
def running(deployment: Deployment) -> Deployment:
    deployment.start_control()
    for cluster in CLUSTERS:
        deployment.start_gateway(cluster)
    return deployment


def whoami(dep: Deployment, cluster: str, secret: str) -> httpx2.Response:
    return httpx2.get(
        dep.gateway_url(cluster) + "/v1/api-key",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=5,
    )


def propagation(client: httpx2.Client, key_id: str) -> dict[str, bool]:
    response = client.get(f"/auth/api-keys/{key_id}/propagation")
    assert response.status_code == 200, response.text
    status: dict[str, bool] = response.json()["icPropagation"]
    return status


def all_true(client: httpx2.Client, key_id: str) -> bool:
    status = propagation(client, key_id)
    assert set(status) == {f"{c}.api.test" for c in CLUSTERS}
    return all(status.values())


def create(client: httpx2.Client, team: str, **body: object) -> dict[str, object]:
    response = client.post(f"/auth/teams/{team}/api-keys", json={"name": "k", **body})
    assert response.status_code == 200, response.text
    created: dict[str, object] = response.json()
    return created


def test_every_change_reaches_both_gateways(running: Deployment) -> None:
    team, mgmt = running.create_team("acme")
    with connect(running.control_url, mgmt) as c:
        key = create(c, team, acls=["api-key:endpoint:*"], qps=5)
        key_id, secret = str(key["apiKeyId"]), str(key["apiKey"])
        wait_for(lambda: all_true(c, key_id), what="create propagated")
        for cluster in CLUSTERS:
            info = whoami(running, cluster, secret)
            assert info.status_code == 200, info.text
            assert info.json()["api_key_id"] == key_id
            assert info.json()["acls"] == ["api-key:endpoint:*"]

        # Update: the new name and ACLs become visible everywhere.
        r = c.put(
            f"/auth/api-keys/{key_id}",
            json={
                "apiKey": {"name": "renamed", "acls": ["api-key:model:grok-4"]},
                "fieldMask": "name,acls",
            },
        )
        assert r.status_code == 200, r.text
        wait_for(lambda: all_true(c, key_id), what="update propagated")
        for cluster in CLUSTERS:
            body = whoami(running, cluster, secret).json()
            assert body["name"] == "renamed"
            assert body["acls"] == ["api-key:model:grok-4"]

        # Disable: the gateways know.
        r = c.put(
            f"/auth/api-keys/{key_id}", json={"apiKey": {"disabled": True}, "fieldMask": "disabled"}
        )
        assert r.status_code == 200, r.text
        wait_for(lambda: all_true(c, key_id), what="disable propagated")
        for cluster in CLUSTERS:
            assert whoami(running, cluster, secret).json()["api_key_disabled"] is True

        # Rotate with the default grace (24 h): both secrets work, whatever the test's speed.
        r = c.post(f"/auth/api-keys/{key_id}/rotate", json={})
        assert r.status_code == 200, r.text
        second = r.json()["apiKey"]
        assert second != secret
        wait_for(lambda: all_true(c, key_id), what="rotation propagated")
        for cluster in CLUSTERS:
            assert whoami(running, cluster, second).status_code == 200
            assert whoami(running, cluster, secret).status_code == 200
        # Rotate again with a short grace: the first secret dies at once (two live at most),
        # the second dies when its grace ends, the newest lives on.
        grace_end = datetime.now(UTC) + timedelta(seconds=2)
        r = c.post(
            f"/auth/api-keys/{key_id}/rotate",
            json={"oldSecretExpireTime": grace_end.isoformat().replace("+00:00", "Z")},
        )
        assert r.status_code == 200, r.text
        new_secret = r.json()["apiKey"]
        wait_for(lambda: all_true(c, key_id), what="second rotation propagated")
        for cluster in CLUSTERS:
            assert whoami(running, cluster, new_secret).status_code == 200
            assert whoami(running, cluster, secret).status_code == 400
        for cluster in CLUSTERS:
            wait_for(
                lambda cl=cluster: whoami(running, cl, second).status_code == 400,  # type: ignore[misc]
                timeout=10,
                what="the second secret to die after its grace",
            )
            assert whoami(running, cluster, new_secret).status_code == 200

        # Delete: refused everywhere; propagation still answers, and says it arrived.
        assert c.delete(f"/auth/api-keys/{key_id}").json() == {}
        wait_for(lambda: all_true(c, key_id), what="delete propagated")
        for cluster in CLUSTERS:
            refused = whoami(running, cluster, new_secret)
            assert refused.status_code == 400
            assert refused.json()["code"] == "invalid-argument"
            assert new_secret not in refused.text


def test_killed_gateway_serves_its_last_state_at_once_then_catches_up(running: Deployment) -> None:
    team, mgmt = running.create_team("acme")
    gateway = next(p for p in running.procs if p.name == "gateway-us-east-1-0")
    control = next(p for p in running.procs if p.name == "control")
    with connect(running.control_url, mgmt) as c:
        before = create(c, team)
        wait_for(lambda: all_true(c, str(before["apiKeyId"])), what="first key everywhere")
        gateway.kill()
        after = create(c, team)
        # The killed cluster has not seen the new key; the live one has.
        wait_for(
            lambda: propagation(c, str(after["apiKeyId"]))["eu-west-1.api.test"],
            what="live cluster true",
        )
        assert propagation(c, str(after["apiKeyId"]))["us-east-1.api.test"] is False

    # With the control plane gone too, the restarted gateway still serves what it had on disk.
    control.stop()
    gateway.start()
    assert whoami(running, "us-east-1", str(before["apiKey"])).status_code == 200
    assert whoami(running, "us-east-1", str(after["apiKey"])).status_code == 400
    health = httpx2.get(running.gateway_url("us-east-1") + "/healthz").json()
    assert health["synced"] is False

    # The control plane returns: the gateway catches up from its revision.
    control.start()
    wait_for(
        lambda: whoami(running, "us-east-1", str(after["apiKey"])).status_code == 200,
        what="restarted gateway catches up",
    )
    with connect(running.control_url, mgmt) as c:
        wait_for(lambda: all_true(c, str(after["apiKeyId"])), what="both clusters true again")
    assert "snapshot_applied" not in gateway.log().split("gateway_starting")[-1], (
        "a restart resumes from its revision, it does not take a new snapshot"
    )


def test_gateways_keep_enforcing_while_the_control_plane_is_down(running: Deployment) -> None:
    team, mgmt = running.create_team("acme")
    with connect(running.control_url, mgmt) as c:
        key = create(c, team)
        wait_for(lambda: all_true(c, str(key["apiKeyId"])), what="key everywhere")
    next(p for p in running.procs if p.name == "control").kill()
    for cluster in CLUSTERS:
        assert whoami(running, cluster, str(key["apiKey"])).status_code == 200
        assert whoami(running, cluster, "xai-" + "x" * 80).status_code == 400


def test_a_cut_off_cluster_reports_false_and_recovers(running: Deployment) -> None:
    team, mgmt = running.create_team("acme")
    eu = next(p for p in running.procs if p.name == "gateway-eu-west-1-0")
    eu.stop()
    with connect(running.control_url, mgmt) as c:
        key = create(c, team)
        key_id = str(key["apiKeyId"])
        wait_for(lambda: propagation(c, key_id)["us-east-1.api.test"], what="us-east-1 true")
        assert propagation(c, key_id)["eu-west-1.api.test"] is False
        eu.start()
        wait_for(lambda: all_true(c, key_id), what="eu-west-1 catches up")
        assert whoami(running, "eu-west-1", str(key["apiKey"])).status_code == 200


def test_feed_refuses_anything_but_a_cluster_credential(running: Deployment) -> None:
    _team, mgmt = running.create_team("acme")
    url = running.control_url + "/internal/v1/changes?after=0&wait=0"
    headers = {"x-keyplane-gateway": "intruder"}
    assert httpx2.get(url, headers=headers).status_code == 401
    for token in (mgmt, "kpgw-" + "a" * 80, "garbage"):
        r = httpx2.get(url, headers={**headers, "Authorization": f"Bearer {token}"})
        assert r.status_code == 401, r.text
    assert httpx2.get(running.control_url + "/internal/v1/snapshot").status_code == 401
    paths = httpx2.get(running.control_url + "/openapi.json").json()["paths"]
    assert not any(p.startswith("/internal") for p in paths)
