"""/openapi.json tells the truth: schemathesis, every check on, against a live control plane.

A real ``keyplane serve control`` process, a management key with every RPC and its real team id
(so generated requests get past the 403 a random team would get), and schemathesis's own CLI run
as a user would run it: its examples, coverage, fuzzing and stateful phases, bounded in examples
per operation. Zero failures means a client generated from the schema and the server agree on
what is accepted, what is refused, and the shape of every answer. The few rules no schema can
state (the clock, another field, an earlier answer) are in ``schemathesis_hooks.py``.

Also: a 405 names every method its path allows (RFC 9110's ``Allow``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support.procs import Deployment

#: Per operation; the whole run stays well under two minutes on a loaded two-core machine.
MAX_EXAMPLES = 40
SEED = 20261204


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, str, str]]:
    dep = Deployment(tmp_path_factory.mktemp("openapi"))
    team_id, secret = dep.create_team("schemathesis")
    proc = dep.start_control()
    yield dep, team_id, secret
    proc.stop(timeout=2)


@pytest.mark.slow  # ~40 s: the default suite keeps under 15 minutes; CI runs -m slow too
def test_schemathesis_finds_no_failure(
    control: tuple[Deployment, str, str], tmp_path: Path
) -> None:
    dep, team_id, secret = control
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is a dev dependency (pip install -e .[dev])"
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "\n".join(
            [
                # Every operation names this team: a random id would only ever meet the 403.
                "[parameters]",
                f'teamId = "{team_id}"',
                "",
                "",
            ]
        )
    )
    done = subprocess.run(
        [
            st,
            "--no-color",
            "--config-file",
            str(config),
            "run",
            f"{dep.control_url}/openapi.json",
            "--header",
            f"Authorization: Bearer {secret}",
            "--checks",
            "all",
            # The propagation of a deleted key answers on purpose: it is what a client waits on
            # to know the deletion reached every cluster (the user's document does so).
            "--exclude-checks",
            "use_after_free",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--continue-on-failure",
            "--request-timeout",
            "10",
        ],
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks",
            "PYTHONPATH": str(Path(__file__).parents[2]),
        },
        cwd=tmp_path,  # schemathesis keeps a cache in its working directory
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-12000:]
    assert "Stateful" in report, report[-3000:]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("TRACE", "/auth/teams/{team}/api-keys", "GET, POST, PUT"),
        ("PATCH", "/auth/api-keys/some-id", "DELETE, PUT"),
        ("GET", "/auth/api-keys/some-id/rotate", "POST"),
    ],
)
def test_a_405_names_every_method_the_path_allows(
    control: tuple[Deployment, str, str], method: str, path: str, allowed: str
) -> None:
    dep, team_id, secret = control
    response = httpx2.request(
        method,
        dep.control_url + path.format(team=team_id),
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )

    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allowed
    assert response.json()["code"] == "invalid-argument"


def test_the_schema_states_what_the_server_requires(control: tuple[Deployment, str, str]) -> None:
    dep, _team_id, _secret = control
    spec = httpx2.get(dep.control_url + "/openapi.json", timeout=10).json()
    shapes = spec["components"]["schemas"]

    assert "apiKeyId" in shapes["ApiKeyPatchInTeam"]["required"]
    assert "name" in shapes["CreateApiKeyRequest"]["required"]
    mask = shapes["UpdateApiKeyRequest"]["properties"]["fieldMask"]["anyOf"]
    assert {m["type"] for m in mask} == {"string", "array", "object"}
    assert all(m.get("minItems", 1) == 1 for m in mask if m["type"] == "array")


def test_a_spending_limit_of_false_is_refused(control: tuple[Deployment, str, str]) -> None:
    dep, team_id, secret = control
    response = httpx2.post(
        f"{dep.control_url}/v1/billing/teams/{team_id}/postpaid/spending-limits",
        json={"desiredSoftSpendingLimit": {"val": False}},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )

    assert response.status_code == 400, response.text
