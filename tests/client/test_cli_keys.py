"""``keyplane keys|models|endpoints|audit`` against a running stack: exit codes 0/1/2, ``--json``
parsed back, tables, ``--secret-only``, and the management key never required as a flag."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from keyplane.cli import main
from tests.client.conftest import TeamCreds
from tests.support.gateway import HELLO, Stack

CHAT = ["--acl", "api-key:endpoint:chat", "--acl", "api-key:model:*"]


def cli(team: TeamCreds, *args: str, key: str | None = None) -> tuple[int, str, str]:
    env = {"KEYPLANE_BASE_URL": team.base_url, "KEYPLANE_MANAGEMENT_KEY": key or team.secret}
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def cli_json(team: TeamCreds, *args: str) -> Any:
    code, out, err = cli(team, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_keys_round_trip_in_json(team: TeamCreds, stack: Stack) -> None:
    created = cli_json(
        team, "keys", "create", "ci", *CHAT, "--qpm", "60", "--tpm", "1000", "--wait", "15"
    )
    key_id = created["apiKeyId"]
    assert created["name"] == "ci"
    assert created["apiKey"].startswith("xai-")
    assert created["aclStrings"] == ["api-key:endpoint:chat", "api-key:model:*"]
    assert (created["qpm"], created["tpm"]) == (60, 1000)

    assert [k["apiKeyId"] for k in cli_json(team, "keys", "list")] == [key_id]
    got = cli_json(team, "keys", "get", key_id)
    assert "apiKey" not in got
    assert got["redactedApiKey"] == created["redactedApiKey"]

    updated = cli_json(
        team, "keys", "update", key_id, "--name", "ci-2", "--qpm", "none", "--disable"
    )
    assert (updated["name"], updated.get("qpm"), updated["disabled"], updated["tpm"]) == (
        "ci-2",
        None,
        True,
        1000,
    )
    updated = cli_json(team, "keys", "update", key_id, "--enable", "--no-acls")
    assert (updated["disabled"], updated["aclStrings"]) == (False, [])

    rotated = cli_json(team, "keys", "rotate", key_id)
    assert rotated["apiKey"] not in (None, created["apiKey"])

    waited = cli_json(team, "keys", "wait", key_id, "--timeout", "15")
    assert set(waited["icPropagation"]) == {f"{c}.api.test" for c in stack.clusters}
    assert all(cli_json(team, "keys", "propagation", key_id)["icPropagation"].values())

    assert cli_json(team, "keys", "delete", key_id) == {}
    assert cli_json(team, "keys", "list") == []
    operations = [e["operation"] for e in cli_json(team, "audit", "--query", "ci")]
    assert operations[-5:] == [
        "CreateApiKey",
        "UpdateApiKey",
        "UpdateApiKey",
        "RotateApiKey",
        "DeleteApiKey",
    ]
    assert len(cli_json(team, "audit", "--limit", "2", "--newest-first")) == 2


def test_models_and_endpoints(team: TeamCreds, stack: Stack) -> None:
    clusters = cli_json(team, "models")
    assert {c["clusterName"] for c in clusters} == set(stack.clusters)
    assert any(m["name"] == "grok-4" for c in clusters for m in c["languageModels"])
    acls = cli_json(team, "endpoints")
    assert "api-key:endpoint:chat" in {a["acl"] for a in acls}

    code, out, _ = cli(team, "models")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["CLUSTER", "MODEL", "KIND", "ALIASES", "RPS", "RPM", "TPM"]
    assert any(line.split()[1:3] == ["grok-4", "language"] for line in lines[1:])
    code, out, _ = cli(team, "endpoints")
    assert code == 0
    assert out.splitlines()[0].split() == ["ACL", "DESCRIPTION"]


def test_tables_and_the_secret_shown_once(team: TeamCreds) -> None:
    code, out, _ = cli(team, "keys", "create", "readable", *CHAT)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["API_KEY_ID", "NAME", "KEY"]
    assert lines[2] == "secret (shown once, keep it safe):"
    secret = lines[3].strip()
    assert secret.startswith("xai-")
    code, out, _ = cli(team, "keys", "list")
    assert code == 0
    assert secret not in out
    assert "xai-..." + secret[-4:] in out
    assert "readable" in out


def test_secret_only_prints_just_the_secret(team: TeamCreds) -> None:
    code, out, _ = cli(team, "keys", "create", "quiet", *CHAT, "--secret-only")
    assert code == 0
    assert out.count("\n") == 1
    secret = out.strip()
    assert secret.startswith("xai-")
    assert len(secret) == len("xai-") + 80
    [key] = cli_json(team, "keys", "list")
    code, out, _ = cli(team, "keys", "rotate", key["apiKeyId"], "--secret-only")
    assert code == 0
    assert out.strip() not in ("", secret)
    assert out.strip().startswith("xai-")


def test_exit_code_1_for_api_errors(team: TeamCreds) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    code, out, err = cli(team, "keys", "rotate", missing)
    assert (code, out) == (1, "")
    assert "not-found" in err
    code, _, err = cli(team, "keys", "create", "x", "--acl", "api-key:endpoint:nope")
    assert code == 1
    assert "invalid-argument" in err
    code, _, err = cli(team, "keys", "list", key="xai-mgmt-" + "0" * 80)
    assert code == 1
    assert "unauthenticated" in err
    code, _, err = cli(team, "keys", "list", "--base-url", "http://127.0.0.1:9")
    assert code == 1
    assert "Traceback" not in err


def test_exit_code_2_for_usage_errors(team: TeamCreds) -> None:
    assert cli(team, "keys", "update", "some-id")[0] == 2  # nothing to change
    assert cli(team, "keys", "create")[0] == 2  # no name
    assert cli(team, "keys", "create", "x", "--qps", "-1")[0] == 2
    assert cli(team, "keys", "update", "x", "--qpm", "lots")[0] == 2
    assert cli(team, "keys", "create", "x", "--expire-time", "tomorrow")[0] == 2
    assert cli(team, "keys", "frobnicate")[0] == 2
    # No management key anywhere, and no terminal to prompt on: a usage error, not a hang.
    result = CliRunner().invoke(
        main,
        ["keys", "list"],
        env={"KEYPLANE_BASE_URL": team.base_url, "KEYPLANE_MANAGEMENT_KEY": ""},
    )
    assert result.exit_code == 2
    assert "KEYPLANE_MANAGEMENT_KEY" in result.stderr
    result = CliRunner().invoke(
        main,
        ["keys", "list"],
        env={"KEYPLANE_BASE_URL": "", "KEYPLANE_MANAGEMENT_KEY": team.secret},
    )
    assert result.exit_code == 2
    assert "KEYPLANE_BASE_URL" in result.stderr


def test_management_key_flag_only_when_given(team: TeamCreds) -> None:
    result = CliRunner().invoke(
        main,
        ["keys", "list", "--json", "--management-key", team.secret],
        env={"KEYPLANE_BASE_URL": team.base_url, "KEYPLANE_MANAGEMENT_KEY": ""},
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_shell_capture_of_a_new_secret_and_its_use(team: TeamCreds, stack: Stack) -> None:
    """The README's line, in a real shell with the installed command."""
    keyplane = shutil.which("keyplane", path=os.path.dirname(sys.executable))
    assert keyplane is not None
    script = (
        f'KEY=$("{keyplane}" keys create shell --acl api-key:endpoint:chat '
        "--acl api-key:model:grok-4 --wait 15 --secret-only) || exit 7\n"
        f'curl -s -o /dev/null -w "%{{http_code}}" {stack.url()}/v1/chat/completions '
        '-H "Authorization: Bearer $KEY" -H "Content-Type: application/json" '
        f"-d '{json.dumps({'model': 'grok-4', 'messages': HELLO})}'\n"
    )
    env = {
        **os.environ,
        "KEYPLANE_BASE_URL": team.base_url,
        "KEYPLANE_MANAGEMENT_KEY": team.secret,
    }
    done = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "200"


def test_prompts_for_the_key_on_a_terminal(team: TeamCreds) -> None:
    """No key in the environment, a terminal on stdin: a hidden prompt, then the command runs."""
    keyplane = str(Path(sys.executable).parent / "keyplane")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_")},
        "KEYPLANE_BASE_URL": team.base_url,
    }
    pid, fd = pty.fork()
    if pid == 0:  # the child: its terminal is the pty
        os.execve(keyplane, [keyplane, "keys", "list", "--json"], env)  # noqa: S606
    seen = b""
    sent = False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child is gone
                break
            if not chunk:
                break
            seen += chunk
            if not sent and b"Management key:" in seen:
                os.write(fd, team.secret.encode() + b"\n")
                sent = True
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = seen.decode(errors="replace")
    assert sent, text
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert team.secret not in text  # not echoed
    assert text.rstrip().endswith("[]")


def test_budget_options(team: TeamCreds) -> None:
    created = cli_json(
        team, "keys", "create", "capped", "--budget-cents", "500", "--budget-period", "day"
    )
    assert created["budget"] == {"cents": 500, "period": "DAY"}
    updated = cli_json(team, "keys", "update", created["apiKeyId"], "--budget-cents", "none")
    assert "budget" not in updated
    code, out, _ = cli(team, "keys", "list")
    assert code == 0
    assert "BUDGET" in out.splitlines()[0]
