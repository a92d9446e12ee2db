"""/openapi.json tells the truth, against a live control plane: a 405 names every method its
path allows (RFC 9110's ``Allow``)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from tests.support.procs import Deployment


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, str, str]]:
    dep = Deployment(tmp_path_factory.mktemp("openapi"))
    team_id, secret = dep.create_team("schemathesis")
    proc = dep.start_control()
    yield dep, team_id, secret
    proc.stop(timeout=2)


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
