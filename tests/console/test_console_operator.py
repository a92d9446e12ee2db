"""The operators' view: a credential minted by ``keyplane admin operators create`` (stored as a
digest) signs in; it shows teams, management keys and each gateway's applied revision, lag and
last seen; revoking the credential ends its sessions; team sessions and operator ones never mix."""

from __future__ import annotations

import json
import re
import subprocess

from playwright.sync_api import Page, expect

from tests.console.conftest import sign_in
from tests.support.gateway import Stack
from tests.support.procs import PYTHON


def admin(stack: Stack, *args: str) -> str:
    done = subprocess.run(
        [PYTHON, "-m", "keyplane.cli", "admin", *args],
        env=stack.dep.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def operator_sign_in(page: Page, base: str, credential: str) -> None:
    page.goto(f"{base}/console/operator/sign-in")
    page.get_by_label("Operator credential").fill(credential)
    page.get_by_role("button", name="Sign in").click()


def test_operators_view(stack: Stack, page: Page) -> None:
    base = stack.dep.control_url
    _team, mgmt = stack.dep.create_team("ops-visible")
    created = json.loads(admin(stack, "operators", "create", "night shift", "--json"))[0]
    credential = created["secret"]
    assert re.fullmatch(r"kp-operator-[A-Za-z0-9]{80}", credential)
    listed = json.loads(admin(stack, "operators", "list", "--json"))
    assert [o["name"] for o in listed if o["operator_id"] == created["operator_id"]] == [
        "night shift"
    ]
    assert credential not in json.dumps(listed)

    # A management key is not an operator credential.
    operator_sign_in(page, base, mgmt)
    expect(page.locator("#credential-error")).to_contain_text("not valid")

    operator_sign_in(page, base, credential)
    page.wait_for_url(f"{base}/console/operator")
    teams = page.get_by_role("region", name="Teams", exact=True).last
    expect(teams).to_contain_text("ops-visible")
    mkeys = page.get_by_role("region", name="Management keys", exact=True).last
    expect(mkeys).to_contain_text("ops-visible key")
    gateways = page.get_by_role("region", name="Gateways")
    for cluster in stack.clusters:
        expect(gateways).to_contain_text(cluster)
    expect(gateways.locator(".state.active")).to_have_count(len(stack.clusters))
    assert credential not in page.content()

    # An operator session is not a team session, and the other way round.
    page.goto(f"{base}/console/keys")
    page.wait_for_url(f"{base}/console/sign-in")
    sign_in(page, base, mgmt)
    page.goto(f"{base}/console/operator")
    expect(page.get_by_role("heading", name="Operators' view")).to_be_visible()

    # Revoking the credential ends the session at once.
    admin(stack, "operators", "revoke", created["operator_id"])
    page.reload()
    page.wait_for_url(f"{base}/console/operator/sign-in")
    operator_sign_in(page, base, credential)
    expect(page.locator("#credential-error")).to_contain_text("not valid")
