"""``keyplane trial``: the production layout on one machine, for trying it out.

PostgreSQL and Redis (from the OS packages, in throwaway directories under ``--data-dir``), two
control-plane replicas on one database, and two clusters of two gateway replicas each sharing
their limits through Redis; plus the built-in model server. Every one of them is a supervised child:
one that dies (SIGKILL included, PostgreSQL and Redis too) is restarted with a backoff while the
others keep running. Ctrl-C or SIGTERM stops everything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from keyplane.settings import Settings
from keyplane.supervisor import (
    Child,
    Supervisor,
    ensure_credentials,
    http_ready,
    port_ready,
)

#: Ports are offsets from ``--port-base`` (8100): control planes, then each cluster's replicas.
CONTROL_OFFSETS = (0, 10)
GATEWAY_OFFSETS = {"us-east-1": (1, 11), "eu-west-1": (2, 12)}
MODEL_SERVER_OFFSET = 99


@dataclass(frozen=True)
class Ports:
    base: int = 8100

    @property
    def control(self) -> list[int]:
        return [self.base + o for o in CONTROL_OFFSETS]

    @property
    def gateways(self) -> dict[str, list[int]]:
        return {name: [self.base + o for o in offs] for name, offs in GATEWAY_OFFSETS.items()}

    @property
    def model_server(self) -> int:
        return self.base + MODEL_SERVER_OFFSET


def _pg_bindir() -> Path:
    found = shutil.which("initdb") or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None
    )
    if found is None:
        raise click.ClickException("PostgreSQL is not installed (apt-get install postgresql)")
    return Path(found).resolve().parent


def _as_postgres(directory: Path) -> list[str]:
    """The command prefix that runs a PostgreSQL tool as ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return []
    shutil.chown(directory, "postgres", "postgres")  # PostgreSQL refuses to run as root
    return ["runuser", "-u", "postgres", "--"]


def write_config(data_dir: Path, pg_port: int, redis_port: int, ports: Ports) -> Path:
    controls = [f"http://127.0.0.1:{p}" for p in ports.control]
    lines = [
        f'data_dir = "{data_dir}"',
        f'database_url = "postgresql://postgres@127.0.0.1:{pg_port}/keyplane"',
        "feed_urls = [" + ", ".join(f'"{u}"' for u in controls) + "]",
        "[control]",
        f"port = {ports.control[0]}",
        "[model_server]",
        f"port = {ports.model_server}",
        "[limiter]",
        'backend = "redis"',
        f'redis_url = "redis://127.0.0.1:{redis_port}/0"',
        'failure_policy = "local"',
        "replicas = 2",
    ]
    for name, (port, _) in ports.gateways.items():
        lines += [
            "[[clusters]]",
            f'name = "{name}"',
            f'host = "{name}.api.keyplane.local"',
            "[clusters.gateway]",
            f"port = {port}",
        ]
    path = data_dir / "trial.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _stores(data_dir: Path, pg_port: int, redis_port: int) -> list[Child]:
    """PostgreSQL (initdb on first start) and Redis, as supervised children of the lowest tier."""
    pg_root = data_dir / "postgres"
    bindir = _pg_bindir()
    pg_root.mkdir(parents=True, exist_ok=True)
    user = _as_postgres(pg_root)
    if not (pg_root / "data" / "PG_VERSION").exists():
        made = subprocess.run(  # noqa: S603
            [*user, str(bindir / "initdb"), "-D", str(pg_root / "data"), "-U", "postgres",
             "-A", "trust"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        if made.returncode != 0:
            raise click.ClickException(made.stderr.decode(errors="replace").strip())
    redis = shutil.which("redis-server")
    if redis is None:
        raise click.ClickException("Redis is not installed (apt-get install redis-server)")
    return [
        Child(
            "PostgreSQL",
            [
                str(bindir / "postgres"),
                "-D",
                str(pg_root / "data"),
                "-p",
                str(pg_port),
                "-k",
                str(pg_root),
                "-c",
                "listen_addresses=127.0.0.1",
            ],
            port_ready(pg_port),
            output=data_dir / "postgres.log",
            tier=0,
            user="postgres" if user else None,
        ),
        Child(
            "Redis",
            [
                redis,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(data_dir),
            ],
            port_ready(redis_port),
            output=data_dir / "redis.log",
            tier=0,
        ),
    ]


def _create_database(data_dir: Path, pg_port: int) -> None:
    pg_root = data_dir / "postgres"
    bindir = _pg_bindir()
    created = subprocess.run(  # noqa: S603
        [*_as_postgres(pg_root), str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(pg_port),
         "-U", "postgres", "keyplane"],
        capture_output=True,
    )  # fmt: skip
    if created.returncode != 0 and b"already exists" not in created.stderr:
        raise click.ClickException(created.stderr.decode(errors="replace"))


def _servers(config: Path, settings: Settings, ports: Ports) -> list[Child]:
    base = [sys.executable, "-m", "keyplane.cli"]
    cfg = ["--config", str(config)]
    children = [
        Child(
            f"control plane {i}",
            [*base, "serve", "control", *cfg, "--port", str(port)],
            http_ready(f"http://127.0.0.1:{port}/healthz"),
        )
        for i, port in enumerate(ports.control)
    ]
    children.append(
        Child(
            "model server",
            [*base, "serve", "models", *cfg],
            http_ready(f"{settings.model_server.url}/v1/models"),
        )
    )
    for name, gateway_ports in ports.gateways.items():
        children += [
            Child(
                f"gateway {name}/{replica}",
                [
                    *base,
                    "serve",
                    "gateway",
                    *cfg,
                    "--cluster",
                    name,
                    "--replica",
                    str(replica),
                    "--port",
                    str(port),
                ],
                http_ready(f"http://127.0.0.1:{port}/healthz"),
                tier=2,
            )
            for replica, port in enumerate(gateway_ports)
        ]
    return children


def run_trial(data_dir: Path, pg_port: int, redis_port: int, ports: Ports | None = None) -> int:
    """Start the stores, set up the database, start the servers, and supervise all of them."""
    from keyplane import bootstrap
    from keyplane.runtime import open_context
    from keyplane.settings import load_settings

    ports = ports or Ports()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor()
    try:
        if not supervisor.start(_stores(data_dir, pg_port, redis_port)):
            return _did_not_start(supervisor, "PostgreSQL or Redis")
        _create_database(data_dir, pg_port)
        config = write_config(data_dir, pg_port, redis_port, ports)
        settings = load_settings(config)
        ctx = open_context(settings)
        boot = bootstrap.ensure(ctx, settings.data_dir)
        ensure_credentials(ctx, settings, replicas=2)
        ctx.db.dispose()
        if not supervisor.start(_servers(config, settings, ports)):
            return _did_not_start(supervisor, "a keyplane process")
        banner = [f"team: {boot.team_name} ({boot.team_id})"]
        if boot.secret:
            banner.append(f"bootstrap management key (shown once): {boot.secret}")
        banner += [f"control plane replica: http://127.0.0.1:{p}" for p in ports.control]
        banner += [
            f"gateway {n} replica {r}: http://127.0.0.1:{p}/v1"
            for n, ps in ports.gateways.items()
            for r, p in enumerate(ps)
        ]
        banner.append(f"PostgreSQL :{pg_port}, Redis :{redis_port}, data in {data_dir}")
        return supervisor.run(banner)
    finally:
        supervisor.stop()


def _did_not_start(supervisor: Supervisor, what: str) -> int:
    if supervisor.stopping:
        return 0
    click.echo(f"keyplane: {what} did not come up; stopping", err=True)
    return 1
