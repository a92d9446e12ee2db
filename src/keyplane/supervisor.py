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
    return [Child("control plane", [*base, "serve", "control", *cfg])]


def run_all(settings: Settings, config: Path | None) -> int:
    children = _children(settings, config)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    env = dict(os.environ)
    for child in children:
        child.process = subprocess.Popen(child.args, env=env)  # noqa: S603 - our own module
    click.echo(f"control plane (Management API): {settings.control.url}")
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
