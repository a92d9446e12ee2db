"""``keyplane admin`` after the move into the cli package: same commands, same output."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.testing import CliRunner

from keyplane.cli import main
from tests.support.procs import Deployment


def run(dep: Deployment, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env={"KEYPLANE_CONFIG": str(dep.config)})
    return result.exit_code, result.output


def test_teams_and_management_keys_round_trip(tmp_path: Path) -> None:
    dep = Deployment(tmp_path)
    code, out = run(dep, "admin", "teams", "create", "acme", "--json")
    assert code == 0, out
    [team] = json.loads(out)
    assert team["name"] == "acme"

    code, out = run(dep, "admin", "teams", "list")
    assert code == 0
    assert out.splitlines()[0].split() == ["TEAM_ID", "NAME", "CREATED"]
    assert team["team_id"] in out

    code, out = run(dep, "admin", "keys", "create", "--team", "acme", "--json")
    assert code == 0, out
    [key] = json.loads(out)
    assert key["team_id"] == team["team_id"]
    assert key["secret"].startswith("xai-mgmt-")

    code, out = run(dep, "admin", "keys", "revoke", key["key_id"])
    assert code == 0, out
    assert out.startswith(f"revoked management key {key['key_id']}")

    code, out = run(dep, "admin", "keys", "list", "--team", team["team_id"], "--json")
    assert code == 0
    assert [(k["key_id"], k["state"]) for k in json.loads(out)] == [(key["key_id"], "revoked")]


def test_unknown_team_is_a_clean_error(tmp_path: Path) -> None:
    dep = Deployment(tmp_path)
    code, out = run(dep, "admin", "keys", "create", "--team", "nobody")
    assert code == 1
    assert out.startswith("Error: ")
    assert "Traceback" not in out


def test_every_family_is_registered() -> None:
    # Through the group's API: the families are imported when asked for (keyplane.cli).
    ctx = click.Context(main)
    assert set(main.list_commands(ctx)) >= {"serve", "up", "trial", "admin"}
    serve = main.get_command(ctx, "serve")
    assert isinstance(serve, click.Group)
    assert set(serve.commands) == {"control", "gateway", "models"}
