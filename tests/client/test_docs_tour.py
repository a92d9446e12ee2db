"""docs/sdk.md's tour and docs/cli.md's examples, run as written against a running stack.

The only change made to them: the default addresses (``127.0.0.1:8100`` and ``:8101``) become the
test stack's, and the management key is the test team's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.client.conftest import TeamCreds
from tests.support.gateway import Stack

DOCS = Path(__file__).resolve().parents[2] / "docs"


def blocks(page: str, language: str) -> list[str]:
    text = (DOCS / page).read_text()
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def localized(code: str, team: TeamCreds, stack: Stack) -> str:
    gateway = stack.url("us-east-1")
    return code.replace("http://127.0.0.1:8101", gateway).replace(
        "http://127.0.0.1:8100", team.base_url
    )


def env_for(team: TeamCreds) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_")},
        "KEYPLANE_BASE_URL": team.base_url,
        "KEYPLANE_MANAGEMENT_KEY": team.secret,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }


def test_the_sdk_tour_runs_as_written(team: TeamCreds, stack: Stack, tmp_path: Path) -> None:
    code = blocks("sdk.md", "python")
    assert len(code) >= 5, "the tour lost its code blocks"
    script = tmp_path / "tour.py"
    script.write_text("\n".join(localized(block, team, stack) for block in code))
    done = subprocess.run(
        [sys.executable, str(script)],
        env=env_for(team),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "gone"
    assert "'us-east-1.api.test': True" in done.stdout
    assert any("tour" in line and "CreateApiKey" in line for line in lines)


def run_shell(script: str, team: TeamCreds, cwd: Path) -> str:
    """Run ``script`` in bash (strict mode) with the team's environment; its stdout."""
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        env=env_for(team),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The gateway's GET /v1/api-key answer for the new key: it works.
    assert '"api_key_disabled":false' in done.stdout.replace(" ", "")
    return done.stdout


def without_exports(block: str) -> str:
    """The setup lines set what ``env_for`` already sets, for the test stack instead."""
    return "\n".join(line for line in block.splitlines() if not line.startswith("export "))


def test_the_cli_page_runs_as_written(team: TeamCreds, stack: Stack, tmp_path: Path) -> None:
    code = blocks("cli.md", "sh")
    assert len(code) >= 4, "the CLI page lost its examples"
    body = "\n".join(without_exports(localized(block, team, stack)) for block in code)
    out = run_shell(body, team, tmp_path)
    assert "deleted " in out
    assert "API_KEY_ID" in out


def test_the_readme_cli_tour_runs_as_written(team: TeamCreds, stack: Stack, tmp_path: Path) -> None:
    readme = (DOCS.parent / "README.md").read_text()
    section = readme.split("## The same tour with the CLI", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"^```sh\n(.*?)^```", section, flags=re.DOTALL | re.MULTILINE)
    body = without_exports(localized(block, team, stack)).replace(
        "K=.venv/bin/keyplane", f"K={Path(sys.executable).parent / 'keyplane'}"
    )
    out = run_shell(body, team, tmp_path)
    assert "deleted " in out
    assert "DeleteApiKey" in out
