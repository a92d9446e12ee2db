"""``keyplane up``: start every process of the embedded deployment, watch them, stop them all.

Each piece is its own OS process talking HTTP over loopback, as in production; Ctrl-C (SIGINT) or
SIGTERM stops them all, children first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import click

from keyplane.services.context import Context
from keyplane.settings import Settings


@dataclass
class Child:
    name: str
    args: list[str]
    #: Polled until it answers before the banner says the system is up.
    ready_url: str | None = None
    process: subprocess.Popen[bytes] | None = None


def _wait_ready(children: list[Child], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    for child in children:
        while child.ready_url is not None:
            assert child.process is not None
            if child.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(child.ready_url, timeout=1):  # noqa: S310 - our URL
                    break
            except OSError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.1)
    return True


def _children(settings: Settings, config: Path | None) -> list[Child]:
    base = [sys.executable, "-m", "keyplane.cli"]
    cfg = ["--config", str(config)] if config else []
    children = [
        Child(
            "control plane",
            [*base, "serve", "control", *cfg],
            f"{settings.control.url}/healthz",
        )
    ]
    if any(m.upstream_url is None for m in settings.models):
        children.append(
            Child(
                "model server",
                [*base, "serve", "models", *cfg],
                f"{settings.model_server.url}/v1/models",
            )
        )
    children += [
        Child(
            f"gateway {c.name}",
            [*base, "serve", "gateway", "--cluster", c.name, *cfg],
            f"{c.gateway.url}/healthz",
        )
        for c in settings.clusters
    ]
    return children


def ensure_credentials(ctx: Context, settings: Settings, *, replicas: int = 1) -> None:
    """Each local gateway gets its cluster's feed credential, issued once and kept on disk; the
    replicas of one cluster share it."""
    from keyplane.gateway.server import CREDENTIAL_FILE, gateway_dir, write_credential
    from keyplane.propagation import feed

    for cluster in settings.clusters:
        first = gateway_dir(settings, cluster.name, 0) / CREDENTIAL_FILE
        credential = first.read_text().strip() if first.exists() else ""
        if not credential or not feed.credential_is_valid(ctx, credential):
            credential = feed.issue_credential(ctx, cluster=cluster.name)
        for replica in range(replicas):
            write_credential(gateway_dir(settings, cluster.name, replica), credential)


def run_all(settings: Settings, config: Path | None) -> int:
    lines = [f"control plane (Management API): {settings.control.url}"]
    lines += [f"gateway {c.name} ({c.host}): {c.gateway.url}/v1" for c in settings.clusters]
    if any(m.upstream_url is None for m in settings.models):
        lines.append(f"built-in model server: {settings.model_server.url}/v1")
    return supervise(_children(settings, config), lines)


def supervise(children: list[Child], banner: list[str], env: dict[str, str] | None = None) -> int:
    """Start ``children``, print ``banner``, and stop them all when one dies or on a signal."""
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for child in children:
        child.process = subprocess.Popen(child.args, env=env or dict(os.environ))  # noqa: S603
    if not _wait_ready(children):
        click.echo("keyplane: a process did not come up; stopping", err=True)
        stopping = True
    for line in banner:
        click.echo(line)
    click.echo("ready; press Ctrl-C to stop")
    code = 0
    while not stopping:
        for child in children:
            assert child.process is not None
            if child.process.poll() is not None:
                click.echo(
                    f"{child.name} exited with {child.process.returncode}; stopping", err=True
                )
                code = child.process.returncode or 1
                stopping = True
        time.sleep(0.2)
    # Gateways first (they hold long-polls to the control plane), then the rest.
    for child in sorted(children, key=lambda c: not c.name.startswith("gateway")):
        if child.process is not None and child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + 10
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
    click.echo("keyplane stopped")
    return code
