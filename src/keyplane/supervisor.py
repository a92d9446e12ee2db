"""``keyplane up``: start every process of the embedded deployment, keep them up, stop them all.

The supervisor behaves like a small init system. Each piece is its own OS process talking HTTP
over loopback, as in production. A child that exits is started again after a backoff (0.5 s,
doubling to 10 s, back to 0.5 s once it has stayed up for a minute), and the console says so; the
others keep running, so the gateways go on answering from their replicas while a control plane is
down. Only Ctrl-C (SIGINT) or SIGTERM stops everything: gateways first, then the control planes and
the model server, then the stores; the exit status is 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import click

from keyplane.services.context import Context
from keyplane.settings import Settings

#: First restart delay, its cap, and how long a child must stay up for the delay to reset.
BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
STABLE_AFTER = 60.0
#: How often the supervisor looks at its children.
TICK = 0.1


def http_ready(url: str) -> Callable[[], bool]:
    """Ready when ``url`` answers at all (any HTTP status below 500)."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - our own loopback URL
                return True
        except OSError:
            return False

    return check


def port_ready(port: int) -> Callable[[], bool]:
    """Ready when something accepts TCP connections on 127.0.0.1:``port``."""

    def check() -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", port)) == 0

    return check


@dataclass
class Child:
    name: str
    args: list[str]
    #: Polled until true before the banner says the system is up (and after each restart).
    ready: Callable[[], bool] | None = None
    #: Where the child's output goes; None = the supervisor's own stdout/stderr.
    output: Path | None = None
    #: Children stop in descending ``tier`` order: gateways (2), servers (1), stores (0).
    tier: int = 1
    #: Run as this OS user (PostgreSQL refuses root); the child is still our direct child, so a
    #: signal to its pid reaches the server itself.
    user: str | None = None
    #: File descriptors the child inherits (a listening socket its workers share).
    pass_fds: tuple[int, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = BACKOFF_START
    restart_at: float | None = None
    restarts: int = 0


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


class Supervisor:
    """Starts children, restarts the ones that exit, and stops them all on SIGINT/SIGTERM."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env or dict(os.environ)
        self.children: list[Child] = []
        self.stopping = False
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _spawn(self, child: Child) -> None:
        log: IO[bytes] | None = child.output.open("ab") if child.output else None
        try:
            child.process = subprocess.Popen(  # noqa: S603 - our own argv
                child.args,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT if log else None,
                user=child.user,
                group=child.user,
                extra_groups=[] if child.user else None,
                pass_fds=child.pass_fds,
            )
        finally:
            if log is not None:
                log.close()
        child.started_at = time.monotonic()
        child.restart_at = None

    def start(self, children: list[Child], *, timeout: float = 60.0) -> bool:
        """Start ``children`` and wait until each is ready; False if one exits or times out first
        (or a stop was asked for)."""
        for child in children:
            self._spawn(child)
            self.children.append(child)
            click.echo(f"keyplane: started {child.name} (pid {self._pid(child)})")
        deadline = time.monotonic() + timeout
        for child in children:
            while child.ready is not None and not child.ready():
                assert child.process is not None
                if self.stopping or child.process.poll() is not None:
                    return False
                if time.monotonic() > deadline:
                    return False
                time.sleep(TICK)
        return not self.stopping

    @staticmethod
    def _pid(child: Child) -> int:
        assert child.process is not None
        return child.process.pid

    def _tend(self, child: Child) -> None:
        """Notice an exit and schedule a restart; perform a restart that is due."""
        assert child.process is not None
        now = time.monotonic()
        if child.restart_at is not None:
            if now >= child.restart_at:
                self._spawn(child)
                child.restarts += 1
                click.echo(f"keyplane: restarted {child.name} (pid {self._pid(child)})", err=True)
            return
        code = child.process.poll()
        if code is None:
            if now - child.started_at >= STABLE_AFTER:
                child.backoff = BACKOFF_START
            return
        if now - child.started_at >= STABLE_AFTER:
            child.backoff = BACKOFF_START
        delay = child.backoff
        child.backoff = min(child.backoff * 2, BACKOFF_MAX)
        child.restart_at = now + delay
        click.echo(
            f"keyplane: {child.name} exited with {_exit_text(code)}; "
            f"restarting in {delay:.1f}s (the others keep running)",
            err=True,
        )

    def run(self, banner: list[str]) -> int:
        """Print ``banner``, then keep the children running until SIGINT/SIGTERM."""
        for line in banner:
            click.echo(line)
        click.echo("ready; press Ctrl-C to stop")
        while not self.stopping:
            for child in self.children:
                self._tend(child)
            time.sleep(TICK)
        return 0

    def stop(self) -> None:
        """Stop every child, highest tier first, each tier given up to 10 s before SIGKILL."""
        for tier in sorted({c.tier for c in self.children}, reverse=True):
            group = [c for c in self.children if c.tier == tier and c.process is not None]
            for child in group:
                assert child.process is not None
                if child.process.poll() is None:
                    child.process.terminate()
            deadline = time.monotonic() + 10
            for child in group:
                assert child.process is not None
                try:
                    child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
        click.echo("keyplane stopped")


def supervise(children: list[Child], banner: list[str], env: dict[str, str] | None = None) -> int:
    """Start ``children``, print ``banner``, keep them running until a signal; then stop them.

    Exit status 0 after Ctrl-C/SIGTERM; 1 when a child does not come up in the first place."""
    supervisor = Supervisor(env)
    try:
        if not supervisor.start(children):
            if supervisor.stopping:
                return 0
            click.echo("keyplane: a process did not come up; stopping", err=True)
            return 1
        return supervisor.run(banner)
    finally:
        supervisor.stop()


def _children(settings: Settings, config: Path | None) -> list[Child]:
    base = [sys.executable, "-m", "keyplane.cli"]
    cfg = ["--config", str(config)] if config else []
    children = [
        Child(
            "control plane",
            [*base, "serve", "control", *cfg],
            http_ready(f"{settings.control.url}/healthz"),
        )
    ]
    if any(m.upstream_url is None for m in settings.models):
        children.append(
            Child(
                "model server",
                [*base, "serve", "models", *cfg],
                http_ready(f"{settings.model_server.url}/v1/models"),
            )
        )
    children += [
        Child(
            f"gateway {c.name}",
            [*base, "serve", "gateway", "--cluster", c.name, *cfg],
            http_ready(f"{c.gateway.url}/healthz"),
            tier=2,
        )
        for c in settings.clusters
    ]
    return children


def ensure_credentials(ctx: Context, settings: Settings, *, replicas: int = 1) -> None:
    """Each local gateway gets a feed credential of its cluster, its own (a credential speaks for
    one gateway), issued once and kept on disk."""
    from keyplane.gateway.server import CREDENTIAL_FILE, gateway_dir, write_credential
    from keyplane.propagation import feed

    for cluster in settings.clusters:
        for replica in range(replicas):
            directory = gateway_dir(settings, cluster.name, replica)
            path = directory / CREDENTIAL_FILE
            credential = path.read_text().strip() if path.exists() else ""
            if not credential or not feed.credential_is_valid(ctx, credential):
                write_credential(directory, feed.issue_credential(ctx, cluster=cluster.name))


def run_all(settings: Settings, config: Path | None) -> int:
    lines = [f"control plane (Management API): {settings.control.url}"]
    lines += [f"gateway {c.name} ({c.host}): {c.gateway.url}/v1" for c in settings.clusters]
    if any(m.upstream_url is None for m in settings.models):
        lines.append(f"built-in model server: {settings.model_server.url}/v1")
    return supervise(_children(settings, config), lines)


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` that children inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_gateway_workers(
    config: Path | None, cluster: str, replica: int, host: str, port: int, workers: int
) -> int:
    """``keyplane serve gateway --workers N``: bind the port here, once, and run N gateway
    processes accepting on that one socket; restart one that exits, as ``keyplane up`` does.
    The socket stays open in this process, so the port answers while a worker restarts
    (connections wait in its backlog for the others)."""
    sock = listening_socket(host, port)
    fd = sock.fileno()
    argv = [sys.executable, "-m", "keyplane.cli", "serve", "gateway", "--cluster", cluster]
    argv += ["--replica", str(replica), "--workers", str(workers), "--listen-fd", str(fd)]
    argv += ["--config", str(config)] if config is not None else []
    supervisor = Supervisor()
    children = [
        Child(f"gateway {cluster} worker {i}", [*argv, "--worker", str(i)], tier=2, pass_fds=(fd,))
        for i in range(workers)
    ]
    try:
        if supervisor.start(children):
            supervisor.run([f"gateway {cluster}: http://{host}:{port}/v1 ({workers} workers)"])
    finally:
        supervisor.stop()
        sock.close()
    return 0
