"""The ``keyplane`` command: ``up`` (everything, on embedded defaults), ``serve`` (one process),
``admin`` (operators: teams, management keys, clusters).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from keyplane import logs
from keyplane.domain.errors import KeyplaneError
from keyplane.domain.timefmt import format_ts
from keyplane.runtime import open_context
from keyplane.settings import Settings, load_settings


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except Exception as error:  # pydantic's ValidationError and a missing file alike
        raise click.ClickException(f"bad configuration: {error}") from None


config_option = click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="KEYPLANE_CONFIG",
    help="TOML file describing the deployment (default: built-in).",
)


@click.group()
def main() -> None:
    """keyplane: Management API for inference API keys, and the gateways that enforce them."""


# -- serve ---------------------------------------------------------------------------------------


@main.group()
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
    from keyplane.propagation.notifier import ChangeNotifier

    settings = _settings(config)
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
    from keyplane.models.config import ModelServerConfig
    from keyplane.models.server import serve as serve_model_server

    settings = _settings(config)
    logs.configure(settings.log_level)
    names = [n for m in settings.models if m.upstream_url is None for n in (m.name, *m.aliases)]
    serve_model_server(
        host or settings.model_server.host,
        port if port is not None else settings.model_server.port,
        ModelServerConfig(
            models=names, latency_s=latency_ms / 1000, token_latency_s=token_latency_ms / 1000
        ),
    )


@serve.command("gateway")
@config_option
@click.option("--cluster", required=True, help="The cluster this gateway serves.")
@click.option("--replica", type=int, default=0, show_default=True, help="Replica index.")
@click.option("--host", default=None, help="Listen address (default from settings).")
@click.option("--port", type=int, default=None, help="Listen port (default from settings).")
def serve_gateway(
    config: Path | None, cluster: str, replica: int, host: str | None, port: int | None
) -> None:
    """One gateway of one cluster: the inference API, enforcing its replica of the keys."""
    import uvicorn

    from keyplane.gateway.server import GatewayProcess

    settings = _settings(config)
    logs.configure(settings.log_level)
    try:
        endpoint = settings.cluster(cluster).gateway
    except KeyError:
        raise click.ClickException(f"unknown cluster {cluster!r}") from None
    app = GatewayProcess(settings, cluster, replica)
    uvicorn.run(
        app,
        host=host or endpoint.host,
        port=port if port is not None else endpoint.port,
        log_config=None,
        access_log=False,
        log_level="warning",
        lifespan="on",
        loop="uvloop",
        http="httptools",
        # The hot path: skip what no one reads (client address rewriting, Server/Date headers).
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )


# -- up ------------------------------------------------------------------------------------------


@main.command()
@config_option
def up(config: Path | None) -> None:
    """Set up on first start, then run the whole system in the foreground (Ctrl-C stops it)."""
    from keyplane import bootstrap
    from keyplane.supervisor import ensure_credentials, run_all

    settings = _settings(config)
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


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".keyplane-trial"),
    show_default=True,
)
@click.option("--pg-port", type=int, default=5433, show_default=True)
@click.option("--redis-port", type=int, default=6380, show_default=True)
def trial(data_dir: Path, pg_port: int, redis_port: int) -> None:
    """The production layout on one machine: PostgreSQL, Redis, two control-plane replicas,
    two clusters of two gateway replicas each."""
    from keyplane.trial import run_trial

    logs.configure("info")
    sys.exit(run_trial(data_dir, pg_port, redis_port))


# -- admin ---------------------------------------------------------------------------------------


@main.group()
def admin() -> None:
    """Operator commands: teams, management keys, clusters."""


def _emit(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("(none)")
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        click.echo("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@admin.group("teams")
def teams() -> None:
    """Create and list teams."""


@teams.command("create")
@config_option
@click.argument("name")
@json_option
def teams_create(config: Path | None, name: str, as_json: bool) -> None:
    from keyplane.services import admin as svc

    ctx = open_context(_settings(config))
    team = _run(lambda: svc.create_team(ctx, name=name))
    _emit([{"team_id": team.team_id, "name": team.name}], as_json)


@teams.command("list")
@config_option
@json_option
def teams_list(config: Path | None, as_json: bool) -> None:
    from keyplane.services import admin as svc

    ctx = open_context(_settings(config))
    rows = [
        {"team_id": t.team_id, "name": t.name, "created": format_ts(t.create_time)}
        for t in svc.list_teams(ctx)
    ]
    _emit(rows, as_json)


@admin.group("keys")
def mkeys() -> None:
    """Management keys: create (secret printed once), list, revoke."""


@mkeys.command("create")
@config_option
@click.option("--team", "team_ref", required=True, help="Team id or name.")
@click.option("--name", default="management key", show_default=True)
@click.option(
    "--acl",
    "acls",
    multiple=True,
    help="team-token:endpoint:<RPC> (repeatable; default: every RPC).",
)
@json_option
def keys_create(
    config: Path | None, team_ref: str, name: str, acls: tuple[str, ...], as_json: bool
) -> None:
    from keyplane.services import admin as svc

    ctx = open_context(_settings(config))
    team = _run(lambda: svc.find_team(ctx, team_ref))
    created = _run(
        lambda: svc.create_management_key(ctx, team_id=team.team_id, name=name, acls=list(acls))
    )
    row = {
        "key_id": created.key.key_id,
        "team_id": team.team_id,
        "name": created.key.name,
        "secret": created.secret,
    }
    if as_json:
        _emit([row], True)
    else:
        click.echo(f"management key {created.key.key_id} for team {team.name}")
        click.echo("secret (shown once, keep it safe):")
        click.echo(f"  {created.secret}")


@mkeys.command("list")
@config_option
@click.option("--team", "team_ref", default=None, help="Team id or name (default: all).")
@json_option
def keys_list(config: Path | None, team_ref: str | None, as_json: bool) -> None:
    from keyplane.services import admin as svc

    ctx = open_context(_settings(config))
    team_id = _run(lambda: svc.find_team(ctx, team_ref)).team_id if team_ref else None
    rows = [
        {
            "key_id": k.key_id,
            "team_id": k.team_id,
            "name": k.name,
            "redacted": k.redacted,
            "state": "revoked" if k.revoke_time else "active",
            "created": format_ts(k.create_time),
        }
        for k in svc.list_management_keys(ctx, team_id=team_id)
    ]
    _emit(rows, as_json)


@mkeys.command("revoke")
@config_option
@click.argument("key_id")
def keys_revoke(config: Path | None, key_id: str) -> None:
    from keyplane.services import admin as svc

    ctx = open_context(_settings(config))
    key = _run(lambda: svc.revoke_management_key(ctx, key_id=key_id))
    click.echo(f"revoked management key {key.key_id} ({key.redacted})")


@admin.group("clusters", invoke_without_command=True)
@config_option
@json_option
@click.pass_context
def clusters(click_ctx: click.Context, config: Path | None, as_json: bool) -> None:
    """Each gateway of each cluster: applied revision, lag, last seen."""
    if click_ctx.invoked_subcommand is not None:
        return
    from keyplane.propagation import feed

    settings = _settings(config)
    ctx = open_context(settings)
    current, gateways = feed.cluster_view(ctx)
    rows = [
        {
            "cluster": g.cluster,
            "gateway": g.gateway_id,
            "applied_revision": g.applied_revision,
            "lag": g.lag,
            "last_seen": format_ts(g.last_seen),
            "live": "yes" if g.live else "no",
        }
        for g in gateways
    ]
    if not as_json:
        click.echo(f"control plane revision: {current}")
    _emit(rows, as_json)


@clusters.command("credential")
@config_option
@click.option("--cluster", required=True, help="The cluster whose gateways will use it.")
def clusters_credential(config: Path | None, cluster: str) -> None:
    """Issue a feed credential for a cluster's gateways (printed once)."""
    from keyplane.propagation import feed

    settings = _settings(config)
    try:
        settings.cluster(cluster)
    except KeyError:
        raise click.ClickException(f"unknown cluster {cluster!r}") from None
    ctx = open_context(settings)
    click.echo(feed.issue_credential(ctx, cluster=cluster))


def _run(action: Any) -> Any:
    try:
        return action()
    except KeyplaneError as error:
        raise click.ClickException(error.message) from None


if __name__ == "__main__":  # pragma: no cover
    main()
