"""Screenshots of the console's main pages for docs/console.md, from a real stack on loopback
driven by Debian's chromium. Run from the repository root:
``.venv/bin/python scripts/console_screenshots.py`` (writes docs/console/*.png)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

import httpx2  # noqa: E402
from playwright.sync_api import Page, sync_playwright  # noqa: E402

from tests.console.conftest import CHROMIUM, CHROMIUM_ARGS, sign_in  # noqa: E402
from tests.support.gateway import Stack, chat_body, start_stack, stop_stack  # noqa: E402
from tests.support.procs import PYTHON  # noqa: E402

OUT = ROOT / "docs" / "console"

KEYS = [
    {"name": "checkout service", "acls": ["api-key:endpoint:chat", "api-key:model:grok-4"],
     "qps": 20, "qpm": 600, "tpm": "200000"},
    {"name": "search indexer", "acls": ["api-key:endpoint:embed", "api-key:model:grok-embed-1"],
     "qpm": 1200},
    {"name": "image pipeline", "acls": ["api-key:endpoint:image", "api-key:model:grok-2-image"],
     "qps": 2},
    {"name": "staging (all models)", "acls": ["api-key:endpoint:*", "api-key:model:*"],
     "expireTime": "2027-03-01T00:00:00Z"},
    {"name": "old batch job", "acls": ["api-key:endpoint:sample", "api-key:model:grok-4"]},
]  # fmt: skip


def traffic(stack: Stack, secrets: list[str]) -> None:
    """Some metered requests, so the usage charts have something to show."""
    time.sleep(1.5)  # the new keys reach the gateways
    chat, embed = secrets
    for i, cluster in enumerate(("us-east-1", "eu-west-1") * 6):
        with stack.client(chat, cluster) as gateway:
            gateway.post("/v1/chat/completions", json=chat_body(max_tokens=8 + 4 * i))
        with stack.client(embed, cluster) as gateway:
            gateway.post("/v1/embeddings", json={"model": "grok-embed-1", "input": "x " * i})
    time.sleep(1.5)  # shipped and rolled up


def shot(page: Page, name: str, *, full: bool = False) -> None:
    page.wait_for_timeout(300)
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=full)
    print(f"docs/console/{name}.png")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="console-shots-") as tmp:
        stack = start_stack(Path(tmp), ("us-east-1", "eu-west-1"))
        try:
            base = stack.dep.control_url
            team_id, secret = stack.dep.create_team("acme")
            with httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}) as api:
                ids, secrets = [], []
                for body in KEYS:
                    answer = api.post(f"/auth/teams/{team_id}/api-keys", json=body)
                    ids.append(answer.json()["apiKeyId"])
                    secrets.append(answer.json()["apiKey"])
                api.put(
                    f"/auth/api-keys/{ids[-1]}",
                    json={"apiKey": {"disabled": True}, "fieldMask": "disabled"},
                )
            traffic(stack, secrets[:2])
            operator = json.loads(
                subprocess.run(  # noqa: S603 (our own CLI, fixed arguments)
                    [PYTHON, "-m", "keyplane.cli", "admin", "operators", "create", "on call",
                     "--json"],
                    env=stack.dep.env, capture_output=True, text=True, check=True, timeout=60,
                ).stdout
            )[0]["secret"]  # fmt: skip
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                for width, suffix in ((1280, ""), (390, "-phone")):
                    context = browser.new_context(
                        viewport={"width": width, "height": 860 if width > 400 else 844},
                        device_scale_factor=1,
                    )
                    page = context.new_page()
                    page.goto(f"{base}/console/sign-in")
                    shot(page, f"sign-in{suffix}")
                    sign_in(page, base, secret)
                    page.locator(".prop .badge.ok").first.wait_for(timeout=15_000)
                    shot(page, f"keys{suffix}", full=True)
                    if suffix:
                        page.goto(f"{base}/console/keys/{ids[0]}")
                        shot(page, f"key-detail{suffix}", full=True)
                        context.close()
                        continue
                    page.goto(f"{base}/console/keys/new")
                    page.get_by_label("Name", exact=True).fill("reporting")
                    page.get_by_role("checkbox", name="chat", exact=True).check()
                    page.get_by_label("Tokens per minute (tpm)").fill("ten thousand")
                    page.get_by_role("button", name="Create API key").click()
                    page.locator("#tpm-error").wait_for()
                    shot(page, "create-error", full=True)
                    page.get_by_label("Tokens per minute (tpm)").fill("10000")
                    page.get_by_role("button", name="Create API key").click()
                    shot(page, "secret-once")
                    page.goto(f"{base}/console/keys/{ids[0]}")
                    shot(page, "key-detail", full=True)
                    page.goto(f"{base}/console/usage?range=24h")
                    page.locator("[data-chart] canvas").first.wait_for()
                    shot(page, "usage", full=True)
                    page.goto(f"{base}/console/catalog")
                    shot(page, "catalog", full=True)
                    page.goto(f"{base}/console/audit")
                    shot(page, "audit")
                    page.goto(f"{base}/console/operator/sign-in")
                    page.get_by_label("Operator credential").fill(operator)
                    page.get_by_role("button", name="Sign in").click()
                    page.wait_for_url(f"{base}/console/operator")
                    shot(page, "operator", full=True)
                    page.goto(f"{base}/docs")
                    page.locator(".swagger-ui .info .title").wait_for()
                    shot(page, "docs")
                    context.close()
                browser.close()
        finally:
            stop_stack(stack)


if __name__ == "__main__":
    main()
