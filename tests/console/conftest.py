"""Console tests: a real stack (control plane, two gateways, model server) driven by a real
browser, Debian's chromium through Playwright. Playwright's own browser download is never used."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from tests.support.gateway import Stack, start_stack, stop_stack

CHROMIUM = os.environ.get("KEYPLANE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
US, EU = "us-east-1", "eu-west-1"
AXE = Path(__file__).parent / "axe.min.js"


# Package scope, not session: Playwright's sync API keeps an event loop running in this thread
# until it stops, and every asyncio test that ran after the console tests would find it there.
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        from tests.support.procs import missing_server

        missing_server("chromium", "chromium", "KEYPLANE_ALLOW_MISSING_CHROMIUM")
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield launched
    launched.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("console"), (US, EU))
    yield running
    stop_stack(running)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    created = context.new_page()
    created.set_default_timeout(15_000)
    return created


def sign_in(page: Page, base_url: str, secret: str) -> None:
    page.goto(f"{base_url}/console/sign-in")
    page.get_by_label("Management key").fill(secret)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base_url}/console/keys")
