"""``keyplane admin usage``: what teams (or one team's keys) consumed and spent, for operators,
read straight from the store."""

from __future__ import annotations

from pathlib import Path

import click

from keyplane.cli._common import config_option, emit, json_option, load, run_service
from keyplane.runtime import open_context


@click.command("usage")
@config_option
@click.option("--team", "team_ref", default=None, help="Team id or name: one row per key.")
@click.option(
    "--days",
    type=click.IntRange(1, 3660),
    default=30,
    show_default=True,
    help="How many days back the usage columns cover.",
)
@json_option
def usage(config: Path | None, team_ref: str | None, days: int, as_json: bool) -> None:
    """Usage per team (or per key of --team) over the last --days, with this month's spend
    (cents) against the team's limit or the key's budget."""
    from keyplane.services import admin as svc
    from keyplane.usage import report

    settings = load(config)
    click.echo(f"Reading usage of the last {days} days…", err=True)
    try:
        ctx = open_context(settings)
    except Exception as error:  # a database that is not there, or not reachable
        raise click.ClickException(f"cannot open the store: {type(error).__name__}") from None
    try:
        if team_ref is None:
            rows = report.teams(ctx, days=days)
            kind = "team"
        else:
            team = run_service(lambda: svc.find_team(ctx, team_ref))
            rows = report.keys(ctx, team_id=team.team_id, days=days)
            kind = "key"
    finally:
        ctx.db.dispose()
    emit(
        [
            {
                kind: r.id,
                "name": r.name,
                "requests": r.requests,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "usd": round(r.usd, 6) if as_json else f"{r.usd:.4f}",
                "month_cents": round(r.month_cents, 4) if as_json else f"{r.month_cents:.2f}",
                "limit" if kind == "team" else "budget": r.limit,
                "blocked": r.blocked,
            }
            for r in rows
        ],
        as_json,
    )
