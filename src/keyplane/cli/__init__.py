"""The ``keyplane`` command, one module per family of subcommands:

- ``serve`` / ``up`` / ``trial`` (:mod:`keyplane.cli.serve`): run the system;
- ``admin`` (:mod:`keyplane.cli.admin`): operators, straight on the database; ``admin usage``
  (:mod:`keyplane.cli.usage`);
- ``keys`` (:mod:`keyplane.cli.keys`), ``models`` / ``endpoints`` / ``audit``
  (:mod:`keyplane.cli.catalog`): management-key holders, over HTTP through :mod:`keyplane.client`.
"""

from __future__ import annotations

import click

from keyplane.cli import admin, catalog, keys, serve, usage


@click.group()
def main() -> None:
    """keyplane: Management API for inference API keys, and the gateways that enforce them."""


main.add_command(serve.serve)
main.add_command(serve.up)
main.add_command(serve.trial)
main.add_command(admin.admin)
admin.admin.add_command(usage.usage)  # keyplane admin usage
main.add_command(keys.keys)
main.add_command(catalog.models)
main.add_command(catalog.endpoints)
main.add_command(catalog.audit)

__all__ = ["main"]
