"""``/docs`` renders with no network but loopback, and the console passes axe-core's checks at
desktop and phone widths."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import httpx2
import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.console.conftest import AXE, sign_in
from tests.support.gateway import Stack


def test_docs_assets_are_served_locally(stack: Stack) -> None:
    base = stack.dep.control_url
    html = httpx2.get(f"{base}/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), f"{asset} is not served by the control plane"
        assert httpx2.get(base + asset).status_code == 200, asset
    assert httpx2.get(f"{base}/redoc").status_code == 404


def test_docs_render_with_no_network(stack: Stack, page: Page) -> None:
    base = stack.dep.control_url
    foreign: list[str] = []

    def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    page.route("**/*", only_loopback)
    page.goto(f"{base}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("keyplane Management API")
    expect(page.get_by_text("/auth/teams/{teamId}/api-keys").first).to_be_visible()
    assert foreign == []


def serious_violations(page: Page) -> list[str]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
    )
    return [
        f"{v['id']} ({v['impact']}): {json.dumps([n['target'] for n in v['nodes']])}"
        for v in result
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("width", [1280, 390])
def test_console_pages_pass_axe(stack: Stack, browser: Browser, width: int) -> None:
    base = stack.dep.control_url
    team_id, secret = stack.dep.create_team(f"a11y-{width}")
    context = browser.new_context(viewport={"width": width, "height": 900}, bypass_csp=True)
    try:
        page = context.new_page()
        page.goto(f"{base}/console/sign-in")
        found = {"sign-in": serious_violations(page)}
        sign_in(page, base, secret)
        with httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}) as api:
            created = api.post(
                f"/auth/teams/{team_id}/api-keys",
                json={"name": "a11y", "acls": ["api-key:endpoint:chat"], "qps": 3},
            ).json()
        for name, path in [
            ("keys", "/console/keys"),
            ("new", "/console/keys/new"),
            ("detail", f"/console/keys/{created['apiKeyId']}"),
            ("delete", f"/console/keys/{created['apiKeyId']}/delete"),
            ("catalog", "/console/catalog"),
            ("audit", "/console/audit"),
            ("usage", "/console/usage"),
        ]:
            page.goto(base + path)
            found[name] = serious_violations(page)
        page.goto(f"{base}/console/operator/sign-in")
        found["operator sign-in"] = serious_violations(page)
        # A page with an error at its field.
        page.goto(f"{base}/console/keys/new")
        page.get_by_label("Name", exact=True).fill("x")
        page.get_by_label("Tokens per minute (tpm)").fill("lots")
        page.get_by_role("button", name="Create API key").click()
        expect(page.locator("#tpm-error")).to_be_visible()
        found["field error"] = serious_violations(page)
        # Nothing wider than the window at phone width, but the scrolling tables.
        overflow = page.evaluate("() => document.documentElement.scrollWidth")
        assert overflow <= width + 1
    finally:
        context.close()
    assert {k: v for k, v in found.items() if v} == {}


def test_keyboard_reaches_every_control(stack: Stack, page: Page) -> None:
    base = stack.dep.control_url
    _team, secret = stack.dep.create_team("keyboard")
    page.goto(f"{base}/console/sign-in")
    expect(page.get_by_label("Management key")).to_be_focused()
    page.keyboard.type(secret)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/console/keys")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    seen: list[str] = []
    for _ in range(12):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("() => document.activeElement.textContent.trim()"))
    assert "Create API key" in seen
    assert "Sign out" in seen
