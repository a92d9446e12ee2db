"""The control plane in the test's own process: ``create_app(...)`` over a real SQLite file, reached
through Starlette's ASGI test transport (an ``httpx2.Client``), with no port and no subprocess.

For tests of what the Management API accepts, refuses and answers, where no process boundary is
under test; the e2e suites keep the ones that prove process behaviour (start-up, SIGKILL,
propagation, the servers' own limits).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from fastapi import FastAPI
from starlette.testclient import TestClient

from keyplane.control.app import create_app
from keyplane.propagation.notifier import ChangeNotifier
from keyplane.runtime import open_context
from keyplane.services import admin
from keyplane.services.context import Context
from keyplane.settings import Settings
from tests.support.management import ManagementClient
from tests.support.procs import Deployment


class AppClient(TestClient):
    """A client of an app whose lifespan already runs (in ``control_app``): entering it starts no
    second lifespan, leaving it only closes the client. Each request is served on the app all the
    same, on a short-lived event loop of its own."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclass
class ControlApp:
    """A running in-process control plane and the deployment (config, data dir) it reads."""

    dep: Deployment
    settings: Settings
    ctx: Context
    app: FastAPI

    def client(self, secret: str | None = None) -> AppClient:
        """An HTTP client of the app, sending ``secret`` as the bearer token if given."""
        headers = {} if secret is None else {"Authorization": f"Bearer {secret}"}
        return AppClient(app=self.app, headers=headers)

    def new_team(self, name: str, defaults: Mapping[str, Any] | None = None) -> ManagementClient:
        """A fresh team with an all-RPC management key, and its client."""
        team = admin.create_team(self.ctx, name=name)
        key = admin.create_management_key(self.ctx, team_id=team.team_id, name=f"{name} key")
        client = ManagementClient(team.team_id, key.secret, self.client(key.secret))
        if defaults:
            client.defaults = defaults
        return client


@contextmanager
def control_app(root: Path) -> Iterator[ControlApp]:
    """A control plane app on a fresh deployment under ``root``, its lifespan running."""
    dep = Deployment(root)
    settings = dep.settings()
    notifier = ChangeNotifier()
    ctx = open_context(settings, on_commit=notifier.notify)
    app = create_app(settings, ctx, notifier)
    try:
        with TestClient(app):
            yield ControlApp(dep, settings, ctx, app)
    finally:
        ctx.db.dispose()
