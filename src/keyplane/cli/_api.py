"""What the commands for management-key holders share: the SDK client from options and the
environment, exit codes, and output (``--json`` as on the wire, a table otherwise).

Exit codes: 0 done, 1 the API said no (or could not be reached), 2 the command line was wrong.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import click
import msgspec

from keyplane.client import (
    BASE_URL_ENV,
    MANAGEMENT_KEY_ENV,
    Client,
    KeyplaneClientError,
)
from keyplane.client.errors import ConfigurationError

_OPTIONS = (
    click.option(
        "--base-url",
        envvar=BASE_URL_ENV,
        metavar="URL",
        help=f"Management API base URL (default: ${BASE_URL_ENV}).",
    ),
    click.option(
        "--management-key",
        metavar="KEY",
        help=f"The management key. Prefer ${MANAGEMENT_KEY_ENV} or the prompt: "
        "a flag lands in shell history.",
    ),
    click.option(
        "--team", "team_id", metavar="ID", help="Team id (default: the management key's team)."
    ),
)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the API's JSON (camelCase, as on the wire)."
)


def _management_key(explicit: str | None) -> str:
    key = explicit or os.environ.get(MANAGEMENT_KEY_ENV)
    if key:
        return key
    if sys.stdin.isatty():
        prompted: str = click.prompt("Management key", hide_input=True, err=True)
        return prompted.strip()
    raise click.UsageError(
        f"no management key: set {MANAGEMENT_KEY_ENV} (or pass --management-key)"
    )


def api_command(fn: Callable[..., None]) -> Callable[..., None]:
    """Give a command the connection options and a ``client`` argument; map SDK errors to exit
    code 1 with the server's message on stderr."""

    @functools.wraps(fn)
    def run(
        base_url: str | None, management_key: str | None, team_id: str | None, **kw: Any
    ) -> None:
        if not base_url:
            raise click.UsageError(f"no base URL: set {BASE_URL_ENV} (or pass --base-url)")
        try:
            with Client(base_url, _management_key(management_key), team_id=team_id) as client:
                fn(client, **kw)
        except ConfigurationError as error:
            raise click.UsageError(str(error)) from None
        except KeyplaneClientError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(1)

    for option in reversed(_OPTIONS):
        run = option(run)
    return run


def to_json(value: Any) -> Any:
    """The SDK's objects as their wire JSON (camelCase), timestamps in RFC 3339; unset optional
    fields left out, as the API does."""
    return _drop_none(msgspec.to_builtins(value))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def print_json(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(to_json(value)), indent=2))


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def table(rows: Sequence[dict[str, Any]]) -> None:
    """Rows as aligned columns, headed by their keys in capitals; ``(none)`` for no rows."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[cell(v) for v in row.values()] for row in rows]
    header = [name.upper() for name in rows[0]]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    for line in [header, *cells]:
        click.echo(
            "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        )


def when(text: str, option: str) -> datetime:
    """An RFC 3339 / ISO 8601 time from the command line (``Z`` or an offset; naive = UTC)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an RFC 3339 time", param_hint=option) from None
