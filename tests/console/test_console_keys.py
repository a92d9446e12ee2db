"""The console's key lifecycle in a real browser, against real gateways: what a person does.

Sign in with a management key, create a key and use its secret on both clusters, watch
propagation turn true on both without a reload, edit, see an API error at its field, rotate,
disable, enable, delete with confirmation, sign out.
"""

from __future__ import annotations

import re

import httpx2
from playwright.sync_api import Page, expect

from tests.console.conftest import EU, US, sign_in
from tests.support.gateway import Stack, chat_body
from tests.support.procs import wait_for


def chat(stack: Stack, cluster: str, secret: str) -> int:
    with stack.client(secret, cluster) as client:
        return client.post("/v1/chat/completions", json=chat_body(max_tokens=3)).status_code


def answers(stack: Stack, secret: str, status: int) -> bool:
    return all(chat(stack, cluster, secret) == status for cluster in (US, EU))


def row(page: Page, name: str) -> object:
    return page.get_by_role("row").filter(has=page.get_by_role("link", name=name, exact=True))


def test_key_lifecycle(stack: Stack, page: Page) -> None:
    base = stack.dep.control_url
    _team, mgmt_secret = stack.dep.create_team("lifecycle")
    sign_in(page, base, mgmt_secret)
    assert mgmt_secret not in page.content()

    # Create, with ACL pickers from the catalog; the secret is shown once with a warning.
    page.get_by_role("link", name="Create API key").click()
    page.get_by_label("Name", exact=True).fill("checkout service")
    page.get_by_role("checkbox", name="chat", exact=True).check()
    page.get_by_role("checkbox", name="grok-4", exact=True).check()
    page.get_by_label("Requests per second (qps)").fill("50")
    page.get_by_role("button", name="Create API key").click()
    expect(page.get_by_role("alert")).to_contain_text("shown only once")
    secret = page.get_by_label("Secret").input_value()
    assert re.fullmatch(r"xai-[A-Za-z0-9]{80}", secret)
    page.get_by_role("button", name="Copy").click()
    expect(page.locator(".copied")).not_to_be_empty()

    # The keys table: propagation turns true on both clusters while the page stays open.
    page.get_by_role("link", name="All keys").click()
    the_row = page.get_by_role("row").filter(has_text="checkout service")
    expect(the_row).to_contain_text(secret[-4:])
    expect(the_row.locator(".badge.ok")).to_have_count(2, timeout=20_000)
    wait_for(lambda: answers(stack, secret, 200), what="the new key works on both clusters")

    # Edit: only the changed field is sent (a field mask); the change is shown and enforced.
    the_row.get_by_role("link", name="checkout service").click()
    page.get_by_label("Name", exact=True).fill("checkout")
    page.get_by_role("checkbox", name="grok-4", exact=True).uncheck()
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status")).to_contain_text("Saved: name, acls")
    wait_for(lambda: answers(stack, secret, 403), what="model ACL removal enforced")

    # An API error appears next to the field it names, and nothing is saved.
    page.get_by_label("Requests per minute (qpm)").fill("-3")
    page.get_by_role("button", name="Save changes").click()
    qpm = page.get_by_label("Requests per minute (qpm)")
    expect(qpm).to_have_attribute("aria-invalid", "true")
    error = page.locator("#qpm-error")
    expect(error).to_contain_text("must not be negative")
    described = qpm.get_attribute("aria-describedby") or ""
    assert "qpm-error" in described.split()
    page.get_by_role("checkbox", name="grok-4", exact=True).check()
    qpm.fill("")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status")).to_contain_text("Saved: acls")
    wait_for(lambda: answers(stack, secret, 200), what="model ACL restored")

    # Rotate with a grace period: both secrets work until it ends.
    page.get_by_label("Old secret keeps working for (hours, 0–168)").fill("1")
    page.get_by_role("button", name="Rotate secret").click()
    expect(page.get_by_role("alert")).to_contain_text("keeps working for 1 hour")
    new_secret = page.get_by_label("Secret").input_value()
    assert new_secret != secret
    wait_for(lambda: answers(stack, new_secret, 200), what="rotated secret works")
    assert answers(stack, secret, 200)

    # Disable, then enable.
    page.get_by_role("link", name="Go to the key").click()
    page.get_by_role("button", name="Disable key").click()
    expect(page.get_by_role("status")).to_contain_text("Disabled.")
    wait_for(lambda: answers(stack, new_secret, 403), what="disable enforced")
    page.get_by_role("button", name="Enable key").click()
    expect(page.get_by_role("status")).to_contain_text("Enabled.")
    expect(page.locator(".prop .badge.ok")).to_have_count(2, timeout=20_000)
    wait_for(lambda: answers(stack, new_secret, 200), what="enable enforced")

    # Delete, after a confirmation page.
    page.get_by_role("link", name="Delete key…").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Delete “checkout”?")
    page.get_by_role("button", name="Delete permanently").click()
    expect(page.get_by_role("status")).to_contain_text("The key was deleted.")
    expect(page.get_by_role("link", name="checkout", exact=True)).to_have_count(0)
    wait_for(lambda: answers(stack, new_secret, 400), what="deletion enforced")

    # Sign out: the console is closed until the next sign-in.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{base}/console/sign-in")
    page.goto(f"{base}/console/keys")
    page.wait_for_url(f"{base}/console/sign-in")


def test_search_filters_and_pages(stack: Stack, page: Page) -> None:
    base = stack.dep.control_url
    team_id, secret = stack.dep.create_team("search")
    with httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}) as api:
        for i in range(55):
            body = {"name": f"svc-{i:02d}", "acls": ["api-key:endpoint:chat"] if i % 2 else []}
            assert api.post(f"/auth/teams/{team_id}/api-keys", json=body).status_code == 200
    sign_in(page, base, secret)
    links = page.locator("table.keys tbody a")
    expect(links).to_have_count(50)
    page.get_by_role("link", name="Next page").click()
    expect(links).to_have_count(5)
    page.get_by_role("link", name="First page").click()
    expect(links).to_have_count(50)

    # Typing searches without a reload (htmx), and the URL follows.
    page.get_by_label("Name contains").fill("SVC-1")
    expect(links).to_have_count(10)
    assert "q=SVC-1" in page.url
    page.get_by_label("Holding every ACL").select_option("api-key:endpoint:chat")
    expect(links).to_have_count(5)
    expect(page.get_by_role("link", name="svc-11", exact=True)).to_be_visible()
