"""The console holds no powers of its own: sessions end with their management key, teams stay
apart, forged forms are refused, stored names stay text, and secrets never reach a URL or log."""

from __future__ import annotations

import re

import httpx2
from playwright.sync_api import BrowserContext, Page, expect

from tests.console.conftest import sign_in
from tests.support.gateway import Stack
from tests.support.procs import create_management_key, revoke_management_key


def api(stack: Stack, secret: str) -> httpx2.Client:
    return httpx2.Client(
        base_url=stack.dep.control_url, headers={"Authorization": f"Bearer {secret}"}
    )


def create_key(stack: Stack, team_id: str, secret: str, name: str) -> str:
    with api(stack, secret) as client:
        response = client.post(f"/auth/teams/{team_id}/api-keys", json={"name": name})
    assert response.status_code == 200, response.text
    key_id: str = response.json()["apiKeyId"]
    return key_id


def session_client(stack: Stack, context: BrowserContext) -> httpx2.Client:
    """An HTTP client carrying the browser's session cookie, as a forging page would."""
    cookies = {c["name"]: c["value"] for c in context.cookies()}
    return httpx2.Client(base_url=stack.dep.control_url, cookies=cookies)


def test_revoking_the_management_key_ends_the_session(stack: Stack, page: Page) -> None:
    base = stack.dep.control_url
    team_id, _first = stack.dep.create_team("revoked")
    key_id, secret = create_management_key(stack.dep, team_id, name="to revoke")
    sign_in(page, base, secret)
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    revoke_management_key(stack.dep, key_id)
    page.reload()
    page.wait_for_url(f"{base}/console/sign-in")
    # And the revoked key cannot sign in again.
    page.get_by_label("Management key").fill(secret)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#key-error")).to_contain_text("not valid")


def test_a_team_never_sees_another_teams_keys(stack: Stack, page: Page) -> None:
    base = stack.dep.control_url
    a_team, a_secret = stack.dep.create_team("team-a")
    b_team, b_secret = stack.dep.create_team("team-b")
    create_key(stack, a_team, a_secret, "a-only")
    b_key = create_key(stack, b_team, b_secret, "b-secret-project")
    sign_in(page, base, a_secret)
    expect(page.get_by_role("link", name="a-only")).to_be_visible()
    assert "b-secret-project" not in page.content()
    page.get_by_label("Name contains").fill("b-secret")
    expect(page.locator("table.keys tbody")).to_contain_text("No API keys match.")
    for path in (f"/console/keys/{b_key}", f"/console/keys/{b_key}/delete"):
        shown = page.goto(base + path)
        assert shown is not None
        assert shown.status == 404
        expect(page.get_by_role("alert")).to_have_text("Cannot find API key")
    # Nor can a forged POST touch it: the same answer as for a key that does not exist.
    token = re.search(r'name="csrf" value="([^"]+)"', page.content())
    assert token is not None
    with session_client(stack, page.context) as client:
        response = client.post(
            f"/console/keys/{b_key}/delete",
            data={"csrf": token.group(1)},
            headers={"origin": base},
        )
    assert response.status_code == 404
    with api(stack, b_secret) as client:
        assert client.get(f"/auth/teams/{b_team}/api-keys").json()["apiKeys"][0]["name"] == (
            "b-secret-project"
        )


def test_forged_forms_are_refused(stack: Stack, page: Page) -> None:
    base = stack.dep.control_url
    team_id, secret = stack.dep.create_team("csrf")
    key_id = create_key(stack, team_id, secret, "target")
    sign_in(page, base, secret)
    token = re.search(r'name="csrf" value="([^"]+)"', page.content())
    assert token is not None
    attempts = [
        ({"disabled": "true"}, {}),  # no token at all
        ({"disabled": "true", "csrf": "guessed"}, {}),  # a wrong token
        ({"disabled": "true", "csrf": token.group(1)}, {"origin": "http://evil.test"}),
    ]
    with session_client(stack, page.context) as client:
        for data, headers in attempts:
            response = client.post(f"/console/keys/{key_id}/state", data=data, headers=headers)
            assert response.status_code == 403, (data, headers, response.text)
        # A token from one session is no good with another session's cookie.
        other = httpx2.Client(base_url=base)
        with other:
            login = other.get("/console/sign-in")
            pre = re.search(r'name="csrf" value="([^"]+)"', login.text)
            assert pre is not None
            signed = other.post("/console/sign-in", data={"csrf": pre.group(1), "key": secret})
            assert signed.status_code == 303
            response = other.post(
                f"/console/keys/{key_id}/state",
                data={"disabled": "true", "csrf": token.group(1)},
            )
            assert response.status_code == 403
        # And the cookie itself: a flipped byte is no session.
        cookie = client.cookies["kp_session"]
        forged = cookie[:-2] + ("A" if cookie[-2] != "A" else "B") + cookie[-1]
        response = httpx2.get(
            f"{base}/console/keys", cookies={"kp_session": forged}, follow_redirects=False
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/console/sign-in"
    with api(stack, secret) as client:
        assert (
            not client.get(f"/auth/teams/{team_id}/api-keys").json()["apiKeys"][0].get("disabled")
        )


XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'


def test_a_hostile_key_name_is_inert(stack: Stack, page: Page) -> None:
    base = stack.dep.control_url
    team_id, secret = stack.dep.create_team("xss")
    key_id = create_key(stack, team_id, secret, XSS)
    sign_in(page, base, secret)
    expect(page.locator("table.keys tbody a")).to_have_text(XSS)
    page.goto(f"{base}/console/keys/{key_id}")
    expect(page.get_by_role("heading", level=1)).to_have_text(XSS)
    page.goto(f"{base}/console/audit")
    expect(page.locator("table")).to_contain_text("<script>")
    assert page.evaluate("() => window.__xss") is None


def test_the_secret_never_reaches_a_url_or_the_log(stack: Stack, page: Page) -> None:
    base = stack.dep.control_url
    _team, secret = stack.dep.create_team("leaks")
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    sign_in(page, base, secret)
    page.get_by_role("link", name="Create API key").click()
    page.get_by_label("Name", exact=True).fill("leak check")
    page.get_by_role("button", name="Create API key").click()
    api_secret = page.get_by_label("Secret").input_value()
    page.get_by_role("link", name="All keys").click()
    assert secret not in page.content()
    assert api_secret not in page.content()
    cookies = " ".join(c["value"] for c in page.context.cookies())
    assert secret not in cookies
    for url in urls:
        assert secret not in url
        assert api_secret not in url
    log = (stack.dep.root / "control.log").read_text()
    assert secret not in log
    assert api_secret not in log
    assert "/console/sign-in" in log  # the log is the right one


def test_the_console_has_exactly_the_keys_acls(stack: Stack, page: Page) -> None:
    base = stack.dep.control_url
    team_id, full = stack.dep.create_team("narrow")
    _key_id, narrow = create_management_key(
        stack.dep,
        team_id,
        name="read and create only",
        acls=["team-token:endpoint:ListApiKeys", "team-token:endpoint:CreateApiKey"],
    )
    key_id = create_key(stack, team_id, full, "kept")
    sign_in(page, base, narrow)
    expect(page.get_by_role("link", name="kept")).to_be_visible()

    page.goto(f"{base}/console/keys/{key_id}/delete")
    page.get_by_role("button", name="Delete permanently").click()
    expect(page.get_by_role("alert")).to_contain_text("team-token:endpoint:DeleteApiKey")
    page.goto(f"{base}/console/usage")
    expect(page.get_by_text("lacks BillingRead").first).to_be_visible()
    expect(page.get_by_role("button", name="Save limit")).to_have_count(0)
    with api(stack, full) as client:
        names = [k["name"] for k in client.get(f"/auth/teams/{team_id}/api-keys").json()["apiKeys"]]
    assert names == ["kept"]
