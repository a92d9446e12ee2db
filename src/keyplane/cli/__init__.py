"""The ``keyplane`` command, one module per family of subcommands:

- ``serve`` / ``up`` / ``trial`` (:mod:`keyplane.cli.serve`): run the system;
- ``admin`` (:mod:`keyplane.cli.admin`): operators, straight on the database; ``admin usage``
  (:mod:`keyplane.cli.usage`);
- ``keys`` (:mod:`keyplane.cli.keys`), ``models`` / ``endpoints`` / ``audit``
  (:mod:`keyplane.cli.catalog`): management-key holders, over HTTP through :mod:`keyplane.client`.

Each family's module is imported when its command runs, not before: ``keyplane serve gateway``
does not pay for the control plane's store (SQLAlchemy, Alembic) or the API client at start, which
is most of a restarted gateway's time to serve.
"""

from __future__ import annotations

import importlib

import click

#: Command name → (module, attribute) of its click command.
_COMMANDS = {
    "serve": ("keyplane.cli.serve", "serve"),
    "up": ("keyplane.cli.serve", "up"),
    "trial": ("keyplane.cli.serve", "trial"),
    "admin": ("keyplane.cli.admin", "admin"),
    "keys": ("keyplane.cli.keys", "keys"),
    "models": ("keyplane.cli.catalog", "models"),
    "endpoints": ("keyplane.cli.catalog", "endpoints"),
    "audit": ("keyplane.cli.catalog", "audit"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module, attribute = _COMMANDS[cmd_name]
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command


@click.group(cls=_LazyGroup)
def main() -> None:
    """keyplane: Management API for inference API keys, and the gateways that enforce them."""


__all__ = ["main"]
