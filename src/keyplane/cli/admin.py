"""``keyplane admin``: operator commands that open the database directly (teams, management keys,
clusters). For the control-plane host; teams use ``keyplane keys`` over HTTP instead."""

from __future__ import annotations

from pathlib import Path

import click

from keyplane.cli import usage
from keyplane.cli._common import config_option, emit, json_option, load, run_service
from keyplane.domain.timefmt import format_ts
from keyplane.runtime import open_context


@click.group()
def admin() -> None:
    """Operator commands: teams, management keys, clusters."""


@admin.group("teams")
def teams() -> None:
    """Create and list teams."""


@teams.command("create")
@config_option
@click.argument("name")
@json_option
def teams_create(config: Path | None, name: str, as_json: bool) -> None:
    from keyplane.services import admin as svc

    ctx = open_context(load(config))
    team = run_service(lambda: svc.create_team(ctx, name=name))
    emit([{"team_id": team.team_id, "name": team.name}], as_json)


@teams.command("list")
@config_option
@json_option
def teams_list(config: Path | None, as_json: bool) -> None:
    from keyplane.services import admin as svc

    ctx = open_context(load(config))
    rows = [
        {"team_id": t.team_id, "name": t.name, "created": format_ts(t.create_time)}
        for t in svc.list_teams(ctx)
    ]
    emit(rows, as_json)


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

    ctx = open_context(load(config))
    team = run_service(lambda: svc.find_team(ctx, team_ref))
    created = run_service(
        lambda: svc.create_management_key(ctx, team_id=team.team_id, name=name, acls=list(acls))
    )
    row = {
        "key_id": created.key.key_id,
        "team_id": team.team_id,
        "name": created.key.name,
        "secret": created.secret,
    }
    if as_json:
        emit([row], True)
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

    ctx = open_context(load(config))
    team_id = run_service(lambda: svc.find_team(ctx, team_ref)).team_id if team_ref else None
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
    emit(rows, as_json)


@mkeys.command("revoke")
@config_option
@click.argument("key_id")
def keys_revoke(config: Path | None, key_id: str) -> None:
    from keyplane.services import admin as svc

    ctx = open_context(load(config))
    key = run_service(lambda: svc.revoke_management_key(ctx, key_id=key_id))
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

    settings = load(config)
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
    emit(rows, as_json)


@clusters.command("credential")
@config_option
@click.option("--cluster", required=True, help="The cluster whose gateways will use it.")
def clusters_credential(config: Path | None, cluster: str) -> None:
    """Issue a feed credential for one gateway of a cluster (printed once; one per gateway)."""
    from keyplane.propagation import feed

    settings = load(config)
    try:
        settings.cluster(cluster)
    except KeyError:
        raise click.ClickException(f"unknown cluster {cluster!r}") from None
    ctx = open_context(settings)
    click.echo(feed.issue_credential(ctx, cluster=cluster))


@admin.group("operators")
def operators() -> None:
    """Operator credentials for the console's operators' view (teams, keys, clusters)."""


@operators.command("create")
@config_option
@click.argument("name")
@json_option
def operators_create(config: Path | None, name: str, as_json: bool) -> None:
    """Mint an operator credential; the secret is printed once and stored only as a digest."""
    from keyplane.services import admin as svc

    ctx = open_context(load(config))
    created = run_service(lambda: svc.create_operator(ctx, name=name))
    if as_json:
        row = {"operator_id": created.operator.operator_id, "secret": created.secret}
        emit([{**row, "name": created.operator.name}], True)
        return
    click.echo(f"operator {created.operator.operator_id} ({created.operator.name})")
    click.echo("secret (shown once; sign in at /console/operator/sign-in):")
    click.echo(f"  {created.secret}")


@operators.command("list")
@config_option
@json_option
def operators_list(config: Path | None, as_json: bool) -> None:
    from keyplane.services import admin as svc

    ctx = open_context(load(config))
    rows = [
        {
            "operator_id": o.operator_id,
            "name": o.name,
            "redacted": o.redacted,
            "state": "revoked" if o.revoke_time else "active",
            "created": format_ts(o.create_time),
        }
        for o in svc.list_operators(ctx)
    ]
    emit(rows, as_json)


@operators.command("revoke")
@config_option
@click.argument("operator_id")
def operators_revoke(config: Path | None, operator_id: str) -> None:
    """Revoke an operator credential: its console sessions end at once."""
    from keyplane.services import admin as svc

    ctx = open_context(load(config))
    run_service(lambda: svc.revoke_operator(ctx, operator_id=operator_id))
    click.echo(f"revoked operator {operator_id}")


admin.add_command(usage.usage)  # keyplane admin usage
