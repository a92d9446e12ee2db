"""Real keyplane processes for tests: started on free loopback ports, awaited, stopped.

A ``Deployment`` is one data directory and one TOML config; it starts the control plane, gateways
and the model server as separate OS processes, exactly as ``keyplane up`` does, and offers the few
in-process shortcuts tests need for setup (a team and its management key).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx2
import pytest

PYTHON = sys.executable
#: The operators' token of every test deployment: /metrics, detailed /healthz, /_stats.
METRICS_TOKEN = "test-metrics-token"
OPERATOR = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def missing_server(what: str, package: str, allow_env: str) -> NoReturn:
    """A server the suite starts is not installed: fail, or skip when ``allow_env`` is 1."""
    if os.environ.get(allow_env) == "1":
        pytest.skip(f"{what} is not installed")
    pytest.fail(
        f"{what} is not installed: apt-get install -y {package} (scripts/test does), "
        f"or set {allow_env}=1 to skip the tests that need it"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    condition: Callable[[], Any], *, timeout: float = 15.0, what: str = "condition"
) -> Any:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except (httpx2.HTTPError, OSError) as error:
            last_error = error
            result = None
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_error})"
    )


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    url: str
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self, *, ready_path: str = "/healthz", timeout: float = 60.0) -> Proc:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def ready() -> bool:
            if self.popen is not None and self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.log()}")
            return httpx2.get(self.url + ready_path, timeout=1.0).status_code < 500

        wait_for(ready, timeout=timeout, what=f"{self.name} at {self.url}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class Deployment:
    root: Path
    clusters: list[str] = field(default_factory=lambda: ["us-east-1", "eu-west-1"])
    extra_config: str = ""
    #: TOML placed before any table: top-level keys such as database_url.
    top_config: str = ""
    #: Gateways forward clients' x-keyplane-* test knobs to the model server (off in production).
    forward_test_headers: bool = True
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        preload = os.environ.get("KEYPLANE_TEST_PRELOAD")  # the million group (support.million)
        self.preloaded = bool(preload and not self.top_config)
        if preload and self.preloaded:
            shutil.copyfile(preload, self.data_dir / "keyplane.db")
        self.control_port = free_port()
        self.model_port = free_port()
        self.gateway_ports = {name: free_port() for name in self.clusters}
        lines = [
            f'data_dir = "{self.data_dir}"',
            'log_level = "info"',
            f'metrics_token = "{METRICS_TOKEN}"',
            f"forward_test_headers = {str(self.forward_test_headers).lower()}",
            self.top_config,
            "[control]",
            'host = "127.0.0.1"',
            f"port = {self.control_port}",
            "[model_server]",
            'host = "127.0.0.1"',
            f"port = {self.model_port}",
        ]
        for name, port in self.gateway_ports.items():
            lines += [
                "[[clusters]]",
                f'name = "{name}"',
                f'host = "{name}.api.test"',
                "[clusters.gateway]",
                'host = "127.0.0.1"',
                f"port = {port}",
            ]
        self.config = self.root / "keyplane.toml"
        self.config.write_text("\n".join(lines) + "\n" + self.extra_config)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_")},
            "KEYPLANE_CONFIG": str(self.config),
        }

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    def gateway_url(self, cluster: str) -> str:
        return f"http://127.0.0.1:{self.gateway_ports[cluster]}"

    def settings(self) -> Any:
        from keyplane.settings import load_settings

        os.environ["KEYPLANE_CONFIG"] = str(self.config)
        try:
            return load_settings()
        finally:
            del os.environ["KEYPLANE_CONFIG"]

    def _proc(
        self, name: str, args: list[str], url: str, env: dict[str, str] | None = None
    ) -> Proc:
        proc = Proc(
            name=name,
            args=[PYTHON, "-m", "keyplane.cli", *args],
            env={**self.env, **(env or {})},
            url=url,
            log_path=self.root / f"{name}.log",
        )
        self.procs.append(proc)
        return proc

    def control(self, *, port: int | None = None, env: dict[str, str] | None = None) -> Proc:
        port = port or self.control_port
        return self._proc(
            "control", ["serve", "control", "--port", str(port)], f"http://127.0.0.1:{port}", env
        )

    def start_control(self, **kw: Any) -> Proc:
        return self.control(**kw).start()

    def create_team(self, name: str) -> tuple[str, str]:
        """A team and a management key with every RPC, made directly in the store (setup only)."""
        from keyplane.runtime import open_context
        from keyplane.services import admin

        ctx = open_context(self.settings())
        try:
            team = admin.create_team(ctx, name=name)
            key = admin.create_management_key(ctx, team_id=team.team_id, name=f"{name} key")
        finally:
            ctx.db.dispose()
        return team.team_id, key.secret

    def gateway(
        self,
        cluster: str,
        *,
        replica: int = 0,
        port: int | None = None,
        env: dict[str, str] | None = None,
        workers: int = 1,
    ) -> Proc:
        """A gateway process of ``cluster``, with a fresh feed credential of that cluster (with
        ``workers`` > 1: the supervisor of that many worker processes sharing the port)."""
        from keyplane.propagation import feed
        from keyplane.runtime import open_context

        ctx = open_context(self.settings())
        try:
            credential = feed.issue_credential(ctx, cluster=cluster)
        finally:
            ctx.db.dispose()
        port = port or (self.gateway_ports[cluster] if replica == 0 else free_port())
        return self._proc(
            f"gateway-{cluster}-{replica}",
            [
                "serve",
                "gateway",
                "--cluster",
                cluster,
                "--replica",
                str(replica),
                "--port",
                str(port),
                *(["--workers", str(workers)] if workers > 1 else []),
            ],
            f"http://127.0.0.1:{port}",
            {"KEYPLANE_GATEWAY_CREDENTIAL": credential, **(env or {})},
        )

    def start_gateway(self, cluster: str, **kw: Any) -> Proc:
        proc = self.gateway(cluster, **kw).start()
        self.await_first_snapshot(proc)
        return proc

    def await_first_snapshot(self, gateway: Proc) -> None:
        """A fresh gateway of the million group snapshots a million keys first (minutes): the
        tests' own bounds on a change's propagation start once it has. Instant otherwise."""
        if self.preloaded:
            wait_for(
                lambda: httpx2.get(gateway.url + "/healthz", timeout=5.0).json()["synced"],
                timeout=900,
                what=f"{gateway.name}'s first snapshot",
            )

    def models(self) -> Proc:
        return self._proc(
            "models", ["serve", "models", "--port", str(self.model_port)], self.model_url
        )

    def start_models(self) -> Proc:
        return self.models().start(ready_path="/v1/models")

    @property
    def model_url(self) -> str:
        return f"http://127.0.0.1:{self.model_port}"

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


# -- operator shortcuts for control-plane tests (what the CLI would do, done in-process) ---------


@contextmanager
def admin_context(dep: Deployment) -> Iterator[Any]:
    """A ``keyplane.services`` Context on the deployment's store, for operator-only setup."""
    from keyplane.runtime import open_context

    ctx = open_context(dep.settings())
    try:
        yield ctx
    finally:
        ctx.db.dispose()


def create_management_key(
    dep: Deployment,
    team_id: str,
    *,
    name: str = "extra key",
    acls: list[str] | None = None,
    owner_user_id: str | None = None,
) -> tuple[str, str]:
    """Another management key of ``team_id`` (all RPCs unless ``acls``): ``(key_id, secret)``."""
    from keyplane.services import admin

    with admin_context(dep) as ctx:
        created = admin.create_management_key(
            ctx, team_id=team_id, name=name, acls=acls, owner_user_id=owner_user_id
        )
    return created.key.key_id, created.secret


def create_team_in(ctx: Any, name: str) -> tuple[str, str]:
    """``Deployment.create_team`` on an open ``admin_context``: no migration check per team."""
    from keyplane.services import admin

    team = admin.create_team(ctx, name=name)
    key = admin.create_management_key(ctx, team_id=team.team_id, name=f"{name} key")
    return team.team_id, key.secret


def revoke_management_key(dep: Deployment, key_id: str) -> None:
    from keyplane.services import admin

    with admin_context(dep) as ctx:
        admin.revoke_management_key(ctx, key_id=key_id)
