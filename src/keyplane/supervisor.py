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
from dataclasses import dataclass
from pathlib import Path

import click

from keyplane.settings import Settings


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None


def _children(settings: Settings, config: Path | None) -> list[Child]:
    base = [sys.executable, "-m", "keyplane.cli"]
    cfg = ["--config", str(config)] if config else []
    children = [Child("control plane", [*base, "serve", "control", *cfg])]
    if any(m.upstream_url is None for m in settings.models):
        children.append(Child("model server", [*base, "serve", "models", *cfg]))
    children += [
        Child(f"gateway {c.name}", [*base, "serve", "gateway", "--cluster", c.name, *cfg])
        for c in settings.clusters
    ]
    return children


def ensure_credentials(settings: Settings) -> None:
    """Each local gateway gets a feed credential of its cluster, issued once and kept on disk."""
    from keyplane.gateway.server import CREDENTIAL_FILE, gateway_dir, write_credential
    from keyplane.propagation import feed
    from keyplane.runtime import open_context

    ctx = open_context(settings)
    try:
        for cluster in settings.clusters:
            directory = gateway_dir(settings, cluster.name, 0)
            path = directory / CREDENTIAL_FILE
            if path.exists() and feed.credential_is_valid(ctx, path.read_text().strip()):
                continue
            write_credential(directory, feed.issue_credential(ctx, cluster=cluster.name))
    finally:
        ctx.db.dispose()


def run_all(settings: Settings, config: Path | None) -> int:
    children = _children(settings, config)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    ensure_credentials(settings)
    env = dict(os.environ)
    for child in children:
        child.process = subprocess.Popen(child.args, env=env)  # noqa: S603 - our own module
    click.echo(f"control plane (Management API): {settings.control.url}")
    for cluster in settings.clusters:
        click.echo(f"gateway {cluster.name} ({cluster.host}): {cluster.gateway.url}/v1")
    if any(m.upstream_url is None for m in settings.models):
        click.echo(f"built-in model server: {settings.model_server.url}/v1")
    click.echo("press Ctrl-C to stop")
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
    for child in children:
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
