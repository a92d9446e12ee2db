"""``keyplane trial``: the production layout on one machine, for trying it out.

PostgreSQL and Redis (from the OS packages, in throwaway directories under ``--data-dir``), two
control-plane replicas on one database, and two clusters of two gateway replicas each sharing
their limits through Redis; plus the built-in model server. Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from keyplane.supervisor import Child, ensure_credentials, supervise

CONTROL_PORTS = (8100, 8110)
GATEWAY_PORTS = {"us-east-1": (8101, 8111), "eu-west-1": (8102, 8112)}


def _pg_bindir() -> Path:
    found = shutil.which("initdb") or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None
    )
    if found is None:
        raise click.ClickException("PostgreSQL is not installed (apt-get install postgresql)")
    return Path(found).resolve().parent


def _as_postgres(directory: Path) -> list[str]:
    if os.geteuid() != 0:
        return []
    shutil.chown(directory, "postgres", "postgres")  # PostgreSQL refuses to run as root
    return ["runuser", "-u", "postgres", "--"]


def _wait_port(port: int, what: str, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise click.ClickException(f"{what} did not open port {port}")


def write_config(data_dir: Path, pg_port: int, redis_port: int) -> Path:
    controls = [f"http://127.0.0.1:{p}" for p in CONTROL_PORTS]
    lines = [
        f'data_dir = "{data_dir}"',
        f'database_url = "postgresql://postgres@127.0.0.1:{pg_port}/keyplane"',
        "feed_urls = [" + ", ".join(f'"{u}"' for u in controls) + "]",
        "[control]",
        f"port = {CONTROL_PORTS[0]}",
        "[limiter]",
        'backend = "redis"',
        f'redis_url = "redis://127.0.0.1:{redis_port}/0"',
        'failure_policy = "local"',
        "replicas = 2",
    ]
    for name, (port, _) in GATEWAY_PORTS.items():
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


def run_trial(data_dir: Path, pg_port: int, redis_port: int) -> int:
    from keyplane import bootstrap
    from keyplane.runtime import open_context
    from keyplane.settings import load_settings

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pg_root = data_dir / "postgres"
    bindir = _pg_bindir()
    services: list[subprocess.Popen[bytes]] = []
    try:
        if not (pg_root / "data" / "PG_VERSION").exists():
            pg_root.mkdir(parents=True, exist_ok=True)
            user = _as_postgres(pg_root)
            subprocess.run(  # noqa: S603
                [
                    *user,
                    str(bindir / "initdb"),
                    "-D",
                    str(pg_root / "data"),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        user = _as_postgres(pg_root)
        services.append(
            subprocess.Popen(  # noqa: S603
                [
                    *user,
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
                stdout=(data_dir / "postgres.log").open("ab"),
                stderr=subprocess.STDOUT,
            )
        )
        redis = shutil.which("redis-server")
        if redis is None:
            raise click.ClickException("Redis is not installed (apt-get install redis-server)")
        services.append(
            subprocess.Popen(  # noqa: S603
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
                stdout=subprocess.DEVNULL,
            )
        )
        _wait_port(pg_port, "PostgreSQL")
        _wait_port(redis_port, "Redis")
        created = subprocess.run(  # noqa: S603
            [
                *user,
                str(bindir.parent / "bin" / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(pg_port),
                "-U",
                "postgres",
                "keyplane",
            ],
            capture_output=True,
        )
        if created.returncode != 0 and b"already exists" not in created.stderr:
            raise click.ClickException(created.stderr.decode(errors="replace"))
        config = write_config(data_dir, pg_port, redis_port)
        settings = load_settings(config)
        ctx = open_context(settings)
        boot = bootstrap.ensure(ctx, settings.data_dir)
        ensure_credentials(ctx, settings, replicas=2)
        ctx.db.dispose()
        base = [sys.executable, "-m", "keyplane.cli"]
        cfg = ["--config", str(config)]
        children = [
            Child(
                f"control plane {i}",
                [*base, "serve", "control", *cfg, "--port", str(port)],
                f"http://127.0.0.1:{port}/healthz",
            )
            for i, port in enumerate(CONTROL_PORTS)
        ]
        children.append(
            Child(
                "model server",
                [*base, "serve", "models", *cfg],
                f"{settings.model_server.url}/v1/models",
            )
        )
        for name, ports in GATEWAY_PORTS.items():
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
                    f"http://127.0.0.1:{port}/healthz",
                )
                for replica, port in enumerate(ports)
            ]
        banner = [f"team: {boot.team_name} ({boot.team_id})"]
        if boot.secret:
            banner.append(f"bootstrap management key (shown once): {boot.secret}")
        banner += [f"control plane replica: http://127.0.0.1:{p}" for p in CONTROL_PORTS]
        banner += [
            f"gateway {n} replica {r}: http://127.0.0.1:{p}/v1"
            for n, ps in GATEWAY_PORTS.items()
            for r, p in enumerate(ps)
        ]
        banner.append(f"PostgreSQL :{pg_port}, Redis :{redis_port}, data in {data_dir}")
        return supervise(children, banner)
    finally:
        for service in reversed(services):
            service.terminate()
            try:
                service.wait(timeout=15)
            except subprocess.TimeoutExpired:
                service.kill()
