"""What every command family shares: settings loading, the common options, table/JSON output."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from keyplane.settings import Settings, load_settings

T = TypeVar("T")


def load(config: Path | None) -> Settings:
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

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def emit(rows: Sequence[dict[str, Any]], as_json: bool) -> None:
    """Print rows as a JSON list, or as a table with one column per key of the first row."""
    if as_json:
        click.echo(json.dumps(list(rows), indent=2))
        return
    if not rows:
        click.echo("(none)")
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        click.echo("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


def run_service(action: Callable[[], T]) -> T:
    """Run an operator service call, turning its domain errors into a clean CLI error."""
    from keyplane.domain.errors import KeyplaneError

    try:
        return action()
    except KeyplaneError as error:
        raise click.ClickException(error.message) from None
