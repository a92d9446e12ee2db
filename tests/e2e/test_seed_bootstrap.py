"""A fresh gateway starts from the control plane's seed file, as real processes on loopback: it
serves the keys the seed holds, and through the feed the changes made after it (a key created, one
updated, one deleted)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2

from keyplane.services import admin, keys
from keyplane.services.auth import Principal
from tests.support.management import connect
from tests.support.procs import Deployment, admin_context, wait_for

CLUSTER = "us-east-1"


def whoami(dep: Deployment, secret: str) -> httpx2.Response:
    return httpx2.get(
        dep.gateway_url(CLUSTER) + "/v1/api-key",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=5,
    )


def test_a_fresh_gateway_starts_from_the_seed_and_catches_up(tmp_path: Path) -> None:
    dep = Deployment(tmp_path, clusters=[CLUSTER], top_config="seed_min_keys = 0")
    try:
        team, mgmt = dep.create_team("acme")
        with admin_context(dep) as ctx:
            p = Principal(admin.create_management_key(ctx, team_id=team, name="setup").key)
            before = {}
            for name in ("kept", "renamed", "gone"):
                made, _ = keys.create_key(
                    ctx, principal=p, team_id=team, spec=keys.parse_new_key({"name": name})
                )
                assert made is not None
                before[name] = made
        control = dep.start_control()
        wait_for(
            lambda: '"seed_built"' in control.log(),
            timeout=60,
            what="the control plane serving its seed file",
        )

        with connect(dep.control_url, mgmt) as c:
            late = c.post(f"/auth/teams/{team}/api-keys", json={"name": "late"})
            assert late.status_code == 200, late.text
            renamed_id = before["renamed"].key.api_key_id
            r = c.put(
                f"/auth/api-keys/{renamed_id}",
                json={"apiKey": {"name": "new name"}, "fieldMask": "name"},
            )
            assert r.status_code == 200, r.text
            r = c.delete(f"/auth/api-keys/{before['gone'].key.api_key_id}")
            assert r.status_code == 200, r.text

            gateway = dep.start_gateway(CLUSTER)
            wait_for(
                lambda: whoami(dep, late.json()["apiKey"]).status_code == 200,
                what="the key made after the seed, through the feed",
            )
        kept = whoami(dep, before["kept"].secret)
        assert kept.status_code == 200, kept.text
        assert kept.json()["api_key_id"] == before["kept"].key.api_key_id
        assert whoami(dep, before["renamed"].secret).json()["name"] == "new name"
        assert whoami(dep, before["gone"].secret).status_code != 200

        applied = [
            json.loads(line)
            for line in gateway.log().splitlines()
            if line.startswith("{") and '"snapshot_applied"' in line
        ]
        assert [(a.get("source"), a["keys"]) for a in applied] == [("seed", 3)], gateway.log()
    finally:
        dep.stop_all()
