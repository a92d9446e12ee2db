"""``keyplane up`` is an init system for the embedded layout: a child killed with SIGKILL is started
again (and the console says so), the others keep running, gateways answer known keys throughout
(also a gateway restarted while the control plane is down), everything catches up when the control
plane returns, and only Ctrl-C stops it all: exit 0, no traceback, no process left behind.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support.management import connect
from tests.support.procs import Deployment, wait_for
from tests.support.supervised import Supervised, alive, port_held, whoami

CLUSTERS = ("us-east-1", "eu-west-1")


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[Supervised, Deployment]]:
    dep = Deployment(tmp_path)  # only its config: free ports, its own data directory
    supervised = Supervised(["up", "--config", str(dep.config)], dep.env, tmp_path / "console")
    try:
        supervised.wait_ready()
        yield supervised, dep
    finally:
        supervised.cleanup()


def bootstrap(supervised: Supervised, dep: Deployment) -> tuple[str, str]:
    """The team id the console names, and the bootstrap management key from its file."""
    match = re.search(r"team: \S+ \((\S+)\)", supervised.console())
    assert match, supervised.console()
    secret = (dep.data_dir / "bootstrap-management-key").read_text().split()[-1]
    return match.group(1), secret


def create_key(client: httpx2.Client, team: str) -> tuple[str, str]:
    r = client.post(f"/auth/teams/{team}/api-keys", json={"name": "k"})
    assert r.status_code == 200, r.text
    return r.json()["apiKeyId"], r.json()["apiKey"]


def everywhere_true(client: httpx2.Client, key_id: str) -> bool:
    r = client.get(f"/auth/api-keys/{key_id}/propagation")
    return r.status_code == 200 and all(r.json()["icPropagation"].values())


def answering(dep: Deployment, secrets: list[str]) -> None:
    for cluster in CLUSTERS:
        for secret in secrets:
            assert whoami(dep.gateway_url(cluster), secret) == 200, (cluster, secret)


@pytest.mark.slow
def test_up_restarts_what_dies_and_keeps_the_rest_serving(
    up: tuple[Supervised, Deployment],
) -> None:
    supervised, dep = up
    team, secret = bootstrap(supervised, dep)
    assert set(supervised.pids()) == {
        "control plane",
        "model server",
        *(f"gateway {c}" for c in CLUSTERS),
    }
    with connect(dep.control_url, secret) as client:
        first_id, first = create_key(client, team)
        wait_for(lambda: everywhere_true(client, first_id), what="first key propagated")

    # SIGKILL the control plane: the gateways keep answering; the supervisor starts it again.
    old = supervised.kill("control plane")
    answering(dep, [first])
    supervised.wait_restarted("control plane", old)
    with connect(dep.control_url, secret) as client:
        second_id, second = wait_for(lambda: create_key(client, team), what="control plane back")
        wait_for(lambda: everywhere_true(client, second_id), what="second key propagated")
    answering(dep, [first, second])

    # SIGKILL a gateway: the other cluster is untouched, the killed one comes back with its keys.
    eu_pid = supervised.pids()["gateway eu-west-1"]
    old = supervised.kill("gateway us-east-1")
    assert whoami(dep.gateway_url("eu-west-1"), first) == 200
    supervised.wait_restarted("gateway us-east-1", old)
    wait_for(lambda: whoami(dep.gateway_url("us-east-1"), second) == 200, what="gateway back")
    assert supervised.pids()["gateway eu-west-1"] == eu_pid, "a sibling was restarted too"

    # The control plane down (its port held, so each restart fails) and a gateway restarted
    # meanwhile: it serves from its replica, without the feed.
    old_control = supervised.kill("control plane")
    with port_held(dep.control_port):
        old = supervised.kill("gateway us-east-1")
        supervised.wait_restarted("gateway us-east-1", old)
        gateway = dep.gateway_url("us-east-1")
        wait_for(lambda: whoami(gateway, first) == 200, what="restarted gateway serving")
        answering(dep, [first, second])
        assert httpx2.get(gateway + "/healthz").json()["synced"] is False
        wait_for(
            lambda: len(re.findall(r"control plane exited with", supervised.console())) >= 3,
            what="a failed restart of the control plane, retried",
        )

    # The control plane returns: everything catches up.
    supervised.wait_restarted("control plane", old_control)
    with connect(dep.control_url, secret) as client:
        third_id, third = wait_for(lambda: create_key(client, team), what="control plane back")
        wait_for(lambda: everywhere_true(client, third_id), timeout=40, what="all caught up")
        assert everywhere_true(client, first_id)
    answering(dep, [first, second, third])

    # Ctrl-C: everything stops, exit status 0, no traceback.
    children = supervised.child_pids()
    before = len(supervised.console())
    assert supervised.stop(signal.SIGINT) == 0
    console = supervised.console()[before:]  # a child's crash may print one; the shutdown not
    assert "Traceback" not in console, console
    assert "keyplane stopped" in console
    assert not [p for p in children if alive(p)], "a child outlived up"


@pytest.mark.slow
def test_sigterm_stops_up_cleanly(up: tuple[Supervised, Deployment]) -> None:
    supervised, _dep = up
    assert supervised.stop(signal.SIGTERM) == 0
    assert "Traceback" not in supervised.console()
    assert "keyplane stopped" in supervised.console()
