"""``keyplane trial`` (the production layout on one machine) is an init system too: SIGKILL of a
control plane (one, then both), a gateway replica, Redis or PostgreSQL restarts that child alone;
the gateways answer known keys throughout, a gateway restarted while both control planes are down
serves from its replica, and everything reads ``true`` again once the control planes are back.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import httpx2
import pytest

from keyplane.trial import CONTROL_OFFSETS, GATEWAY_OFFSETS, MODEL_SERVER_OFFSET, Ports
from tests.support.postgres import require_postgres
from tests.support.procs import free_port, missing_server, wait_for
from tests.support.supervised import Supervised, alive, port_held, whoami

pytestmark = pytest.mark.slow


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_base() -> int:
    """A base port whose every trial offset is free right now."""
    offsets = [
        *CONTROL_OFFSETS,
        MODEL_SERVER_OFFSET,
        *(o for g in GATEWAY_OFFSETS.values() for o in g),
    ]
    for _ in range(50):
        base = random.randrange(20_000, 60_000)
        if all(_bindable(base + o) for o in offsets):
            return base
    raise AssertionError("no free port range for the trial")


def synced(url: str) -> bool:
    return bool(httpx2.get(url + "/healthz").json()["synced"])


class Trial:
    def __init__(self, supervised: Supervised, data_dir: Path, ports: Ports) -> None:
        self.supervised, self.data_dir, self.ports = supervised, data_dir, ports

    def control_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports.control[index]}"

    @property
    def gateways(self) -> dict[str, str]:
        return {
            f"gateway {name}/{replica}": f"http://127.0.0.1:{port}"
            for name, ports in self.ports.gateways.items()
            for replica, port in enumerate(ports)
        }

    def client(self, index: int) -> httpx2.Client:
        secret = (self.data_dir / "bootstrap-management-key").read_text().split()[-1]
        return httpx2.Client(
            base_url=self.control_url(index),
            headers={"Authorization": f"Bearer {secret}"},
            timeout=10,
        )

    def team(self) -> str:
        match = re.search(r"team: \S+ \((\S+)\)", self.supervised.console())
        assert match, self.supervised.console()
        return match.group(1)

    def create_key(self, index: int) -> tuple[str, str]:
        """A key made through control plane ``index`` and propagated to every cluster."""
        with self.client(index) as client:

            def create() -> tuple[str, str] | None:
                r = client.post(f"/auth/teams/{self.team()}/api-keys", json={"name": "k"})
                return (r.json()["apiKeyId"], r.json()["apiKey"]) if r.status_code == 200 else None

            key_id, secret = wait_for(create, timeout=60, what="a control plane to take a write")

            def everywhere() -> bool:
                r = client.get(f"/auth/api-keys/{key_id}/propagation")
                return r.status_code == 200 and all(r.json()["icPropagation"].values())

            wait_for(everywhere, timeout=60, what=f"key {key_id} propagated")
        return key_id, secret

    def answering(self, secrets: list[str]) -> None:
        for name, url in self.gateways.items():
            for secret in secrets:
                assert whoami(url, secret) == 200, (name, secret)


@pytest.fixture
def trial(tmp_path: Path) -> Iterator[Trial]:
    require_postgres()
    if shutil.which("redis-server") is None:
        missing_server("Redis", "redis-server", "KEYPLANE_TEST_ALLOW_MISSING_REDIS")
    ports = Ports(free_port_base())
    # PostgreSQL runs as its own user when we are root: its directory must be reachable.
    data_dir = Path(tempfile.mkdtemp(prefix="keyplane-trial-"))
    data_dir.chmod(0o755)
    args = ["trial", "--data-dir", str(data_dir), "--port-base", str(ports.base)]
    args += ["--pg-port", str(free_port()), "--redis-port", str(free_port())]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_")}
    supervised = Supervised(args, env, tmp_path / "console")
    try:
        supervised.wait_ready(timeout=180)
        running = Trial(supervised, data_dir, ports)
        # Propagation counts the gateways that have polled: let each make its first poll.
        for name, url in running.gateways.items():
            wait_for(partial(synced, url), what=f"{name} synced")
        yield running
    finally:
        supervised.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_trial_restarts_each_child_alone_and_gateways_keep_serving(trial: Trial) -> None:
    sup = trial.supervised
    assert set(sup.pids()) == {
        "PostgreSQL",
        "Redis",
        "control plane 0",
        "control plane 1",
        "model server",
        *trial.gateways,
    }
    _, first = trial.create_key(0)
    trial.answering([first])

    # One control plane: the other takes writes at once, the killed one comes back.
    old = sup.kill("control plane 0")
    trial.answering([first])
    _, second = trial.create_key(1)
    sup.wait_restarted("control plane 0", old)
    trial.answering([first, second])

    # Both control planes down (ports held so their restarts fail), a gateway replica killed
    # meanwhile: it comes back serving from its replica; the others never stopped.
    olds = [sup.kill("control plane 0"), sup.kill("control plane 1")]
    with ExitStack() as held:
        for port in trial.ports.control:
            held.enter_context(port_held(port))
        trial.answering([first, second])
        old = sup.kill("gateway us-east-1/0")
        sup.wait_restarted("gateway us-east-1/0", old)
        url = trial.gateways["gateway us-east-1/0"]
        wait_for(lambda: whoami(url, second) == 200, what="restarted gateway serving")
        assert httpx2.get(url + "/healthz").json()["synced"] is False
        trial.answering([first, second])
    for index, old in enumerate(olds):
        sup.wait_restarted(f"control plane {index}", old)
    _, third = trial.create_key(0)  # every gateway, the restarted one too, reads true
    trial.answering([first, second, third])

    # Redis: limits fall back to the failure policy; keys keep being served; Redis comes back.
    old = sup.kill("Redis")
    trial.answering([first, second, third])
    sup.wait_restarted("Redis", old)

    # PostgreSQL: gateways serve on; the control planes take writes again once it is back.
    old = sup.kill("PostgreSQL")
    trial.answering([first, second, third])
    sup.wait_restarted("PostgreSQL", old)
    _, fourth = trial.create_key(1)
    trial.answering([first, second, third, fourth])

    children = sup.child_pids()
    before = len(sup.console())
    assert sup.stop(signal.SIGINT) == 0
    console = sup.console()[before:]  # a child's crash may print one; the shutdown must not
    assert "Traceback" not in console, console
    assert "keyplane stopped" in console
    assert not [p for p in children if alive(p)], "a child outlived the trial"
