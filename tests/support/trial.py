"""``keyplane trial`` (the production layout on one machine) started by a test: on free ports, its
console captured, its stores in a throwaway directory, every gateway past its first poll."""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import httpx2

from keyplane.trial import CONTROL_OFFSETS, GATEWAY_OFFSETS, MODEL_SERVER_OFFSET, Ports
from tests.support.postgres import require_postgres
from tests.support.procs import free_port, missing_server, wait_for
from tests.support.supervised import Supervised, whoami


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
    def __init__(
        self, supervised: Supervised, data_dir: Path, ports: Ports, pg_port: int, redis_port: int
    ) -> None:
        self.supervised, self.data_dir, self.ports = supervised, data_dir, ports
        self.pg_port, self.redis_port = pg_port, redis_port

    def control_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports.control[index]}"

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/keyplane"

    @property
    def gateways(self) -> dict[str, str]:
        return {
            f"gateway {name}/{replica}": f"http://127.0.0.1:{port}"
            for name, ports in self.ports.gateways.items()
            for replica, port in enumerate(ports)
        }

    def management_secret(self) -> str:
        return (self.data_dir / "bootstrap-management-key").read_text().split()[-1]

    def client(self, index: int) -> httpx2.Client:
        return httpx2.Client(
            base_url=self.control_url(index),
            headers={"Authorization": f"Bearer {self.management_secret()}"},
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


@contextmanager
def running_trial(console: Path, env: dict[str, str] | None = None) -> Iterator[Trial]:
    """``keyplane trial`` on free ports (``env``: extra KEYPLANE_* settings for every child),
    stopped and its data removed at the end."""
    require_postgres()
    if shutil.which("redis-server") is None:
        missing_server("Redis", "redis-server", "KEYPLANE_TEST_ALLOW_MISSING_REDIS")
    ports = Ports(free_port_base())
    # PostgreSQL runs as its own user when we are root: its directory must be reachable.
    data_dir = Path(tempfile.mkdtemp(prefix="keyplane-trial-"))
    data_dir.chmod(0o755)
    pg_port, redis_port = free_port(), free_port()
    args = ["trial", "--data-dir", str(data_dir), "--port-base", str(ports.base)]
    args += ["--pg-port", str(pg_port), "--redis-port", str(redis_port)]
    base = {k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_")}
    supervised = Supervised(args, {**base, **(env or {})}, console)
    try:
        supervised.wait_ready(timeout=180)
        running = Trial(supervised, data_dir, ports, pg_port, redis_port)
        # Propagation counts the gateways that have polled: let each make its first poll.
        for name, url in running.gateways.items():
            wait_for(partial(synced, url), what=f"{name} synced")
        yield running
    finally:
        supervised.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)
