"""Running the system: ``serve`` (one process), ``up`` (everything, on embedded defaults),
``trial`` (the production layout on one machine)."""

from __future__ import annotations

import secrets
import socket
import sys
from pathlib import Path

import click

from keyplane import logs
from keyplane.cli._common import config_option, load

# -- serve ---------------------------------------------------------------------------------------


@click.group()
def serve() -> None:
    """Run one process of the system."""


@serve.command("control")
@config_option
@click.option("--host", default=None, help="Listen address (default from settings).")
@click.option("--port", type=int, default=None, help="Listen port (default from settings).")
def serve_control(config: Path | None, host: str | None, port: int | None) -> None:
    """The control plane: the Management API."""
    import uvicorn

    from keyplane.control.app import create_app
    from keyplane.httpbounds import bounded_protocol
    from keyplane.propagation.notifier import ChangeNotifier
    from keyplane.runtime import open_context  # the store: not a gateway's to import

    settings = load(config)
    logs.configure(settings.log_level)
    notifier = ChangeNotifier()
    ctx = open_context(settings, on_commit=notifier.notify)
    app = create_app(settings, ctx, notifier)
    uvicorn.run(
        app,
        host=host or settings.control.host,
        port=port if port is not None else settings.control.port,
        log_config=None,
        access_log=False,
        log_level="warning",
        http=bounded_protocol(settings.max_head_bytes, settings.max_header_count),
        # Gateways hold long-polls open; they reconnect, so don't wait for them on shutdown.
        timeout_graceful_shutdown=2,
    )


@serve.command("models")
@config_option
@click.option("--host", default=None, help="Listen address (default from settings).")
@click.option("--port", type=int, default=None, help="Listen port (default from settings).")
@click.option("--latency-ms", type=float, default=0.0, help="Delay before the first byte.")
@click.option("--token-latency-ms", type=float, default=0.0, help="Delay per streamed token.")
def serve_models(
    config: Path | None,
    host: str | None,
    port: int | None,
    latency_ms: float,
    token_latency_ms: float,
) -> None:
    """The built-in OpenAI-compatible model server (deterministic, no weights)."""
    from keyplane.modelserver.config import ModelServerConfig
    from keyplane.modelserver.server import serve as serve_model_server

    settings = load(config)
    logs.configure(settings.log_level)
    names = [n for m in settings.models if m.upstream_url is None for n in (m.name, *m.aliases)]
    serve_model_server(
        host or settings.model_server.host,
        port if port is not None else settings.model_server.port,
        ModelServerConfig(
            models=names,
            latency_s=latency_ms / 1000,
            token_latency_s=token_latency_ms / 1000,
            max_head_bytes=settings.max_head_bytes,
            max_headers=settings.max_header_count,
            # No token configured: closed to everyone (a random token nobody knows).
            stats_token=(
                settings.metrics_token.get_secret_value()
                if settings.metrics_token is not None
                else secrets.token_urlsafe(32)
            ),
        ),
    )


@serve.command("gateway")
@config_option
@click.option("--cluster", required=True, help="The cluster this gateway serves.")
@click.option("--replica", type=int, default=0, show_default=True, help="Replica index.")
@click.option("--host", default=None, help="Listen address (default from settings).")
@click.option("--port", type=int, default=None, help="Listen port (default from settings).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes sharing the port (more than one needs limiter.backend = 'redis').",
)
@click.option("--worker", type=int, default=0, hidden=True)
@click.option("--listen-fd", type=int, default=None, hidden=True)
def serve_gateway(
    config: Path | None,
    cluster: str,
    replica: int,
    host: str | None,
    port: int | None,
    workers: int,
    worker: int,
    listen_fd: int | None,
) -> None:
    """One gateway of one cluster: the inference API, enforcing its replica of the keys."""
    import uvicorn

    from keyplane.gateway.server import GatewayProcess, unshared_limits
    from keyplane.httpbounds import bounded_protocol

    settings = load(config)
    logs.configure(settings.log_level)
    try:
        endpoint = settings.cluster(cluster).gateway
    except KeyError:
        raise click.ClickException(f"unknown cluster {cluster!r}") from None
    refused = unshared_limits(settings, replica, workers)
    if refused is not None:
        raise click.ClickException(refused)
    host = host or endpoint.host
    port = port if port is not None else endpoint.port
    if workers > 1 and listen_fd is None:
        from keyplane.supervisor import run_gateway_workers

        sys.exit(run_gateway_workers(config, cluster, replica, host, port, workers))
    app = GatewayProcess(settings, cluster, replica, worker=worker, workers=workers)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            log_level="warning",
            lifespan="on",
            loop="uvloop",
            http=bounded_protocol(settings.max_head_bytes, settings.max_header_count),
            # The hot path: skip what no one reads (client address rewriting, Server/Date headers).
            proxy_headers=False,
            server_header=False,
            date_header=False,
        )
    )
    # A worker accepts on the socket its supervisor bound (run_gateway_workers).
    server.run(sockets=None if listen_fd is None else [socket.socket(fileno=listen_fd)])
    if not server.started:
        sys.exit(3)  # as uvicorn.run: the port could not be opened, or the lifespan failed


# -- up ------------------------------------------------------------------------------------------


@click.command()
@config_option
def up(config: Path | None) -> None:
    """Set up on first start, then run the whole system in the foreground (Ctrl-C stops it)."""
    from keyplane import bootstrap
    from keyplane.runtime import open_context
    from keyplane.supervisor import ensure_credentials, run_all

    settings = load(config)
    logs.configure(settings.log_level)
    ctx = open_context(settings)
    boot = bootstrap.ensure(ctx, settings.data_dir)
    ensure_credentials(ctx, settings)
    ctx.db.dispose()
    click.echo(f"keyplane data directory: {settings.data_dir.resolve()}")
    click.echo(f"team: {boot.team_name} ({boot.team_id})")
    if boot.secret is not None:
        click.echo("bootstrap management key (shown once; also in the file below, mode 0600):")
        click.echo(f"  {boot.secret}")
        click.echo(f"  {boot.path.resolve()}")
    else:
        click.echo(f"management key: issued on first start (see {boot.path.resolve()})")
    sys.exit(run_all(settings, config))


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".keyplane-trial"),
    show_default=True,
)
@click.option("--pg-port", type=int, default=5433, show_default=True)
@click.option("--redis-port", type=int, default=6380, show_default=True)
@click.option(
    "--port-base",
    type=click.IntRange(1024, 65000),
    default=8100,
    show_default=True,
    help="Control planes on +0 and +10, gateways on +1/+11 and +2/+12, model server on +99.",
)
def trial(data_dir: Path, pg_port: int, redis_port: int, port_base: int) -> None:
    """The production layout on one machine: PostgreSQL, Redis, two control-plane replicas,
    two clusters of two gateway replicas each."""
    from keyplane.trial import Ports, run_trial

    logs.configure("info")
    sys.exit(run_trial(data_dir, pg_port, redis_port, Ports(port_base)))
