"""Usage and spend in the console, from real traffic: requests through both clusters' gateways
are metered, shipped and rolled up, then shown per key in the keys table, charted on the key's
page and the team's usage page; the spending limit is set from the console with errors at the
field, and the API reads back what the console set."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
from playwright.sync_api import Page, expect

from tests.console.conftest import EU, US, sign_in
from tests.support.gateway import Stack, chat_body
from tests.support.procs import wait_for


def usage_requests(api: httpx2.Client, team_id: str) -> float:
    end = datetime.now(UTC) + timedelta(hours=1)
    body: dict[str, Any] = {
        "analyticsRequest": {
            "timeRange": {
                "startTime": (end - timedelta(hours=3)).strftime("%Y-%m-%d %H:%M:%S"),
                "endTime": end.strftime("%Y-%m-%d %H:%M:%S"),
                "timezone": "Etc/UTC",
            },
            "timeUnit": "TIME_UNIT_NONE",
            "values": [{"name": "requests", "aggregation": "AGGREGATION_SUM"}],
        }
    }
    answer = api.post(f"/v1/billing/teams/{team_id}/usage", json=body)
    assert answer.status_code == 200, answer.text
    series = answer.json()["timeSeries"]
    return float(series[0]["dataPoints"][0]["values"][0]) if series else 0.0


def test_usage_and_spend(stack: Stack, page: Page) -> None:
    base = stack.dep.control_url
    team_id, secret = stack.dep.create_team("usage")
    with httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}) as api:
        created = api.post(
            f"/auth/teams/{team_id}/api-keys",
            json={"name": "metered", "acls": ["api-key:endpoint:chat", "api-key:model:grok-4"]},
        ).json()
        key_id, key_secret = created["apiKeyId"], created["apiKey"]

        def propagated() -> bool:
            status = api.get(f"/auth/api-keys/{key_id}/propagation").json()["icPropagation"]
            return all(status.values())

        wait_for(propagated, what="key propagated")
        for cluster, count in ((US, 3), (EU, 2)):
            with stack.client(key_secret, cluster) as gateway:
                for _ in range(count):
                    answer = gateway.post("/v1/chat/completions", json=chat_body(max_tokens=4))
                    assert answer.status_code == 200, answer.text
        wait_for(lambda: usage_requests(api, team_id) == 5, what="usage shipped and rolled up")

        sign_in(page, base, secret)
        expect(page.locator(f"#use-{key_id}")).to_contain_text("5 req")

        page.get_by_role("link", name="metered", exact=True).click()
        totals = page.get_by_role("region", name="Usage totals by model")
        expect(totals.locator("tfoot")).to_contain_text("5")
        expect(totals.locator("tbody")).to_contain_text("grok-4")
        expect(page.locator("[data-chart] canvas")).to_have_count(3)

        # A per-key budget (keyplane's own field): an error at the field, then a budget already
        # spent, which blocks the key at every gateway.
        budget = page.get_by_label("Amount (USD, optional)")
        budget.fill("five")
        page.get_by_role("button", name="Save changes").click()
        expect(page.locator("#budget-error")).to_contain_text("dollars")
        expect(budget).to_have_attribute("aria-invalid", "true")
        budget.fill("0")
        page.get_by_label("Per (UTC)").select_option("DAY")
        page.get_by_role("button", name="Save changes").click()
        expect(page.get_by_role("status")).to_contain_text("Saved: budget")
        expect(page.locator(".heading .state")).to_have_text("over budget")
        with stack.client(key_secret, US) as gateway:
            wait_for(
                lambda: gateway.post("/v1/chat/completions", json=chat_body()).status_code == 403,
                what="the spent budget enforced",
            )
        budget.fill("")
        page.get_by_role("button", name="Save changes").click()
        expect(page.locator(".heading .state")).to_have_text("active")

        page.get_by_role("link", name="Usage & spend").click()
        expect(page.get_by_role("region", name="Usage totals by model")).to_contain_text("grok-4")
        expect(page.locator("[data-chart] canvas")).to_have_count(3)

        limit = page.get_by_label("Monthly spending limit (USD)")
        limit.fill("a lot")
        page.get_by_role("button", name="Save limit").click()
        expect(limit).to_have_attribute("aria-invalid", "true")
        expect(page.locator("#limit-error")).to_contain_text("dollars")
        limit.fill("12.50")
        page.get_by_role("button", name="Save limit").click()
        expect(page.get_by_role("status")).to_contain_text("Spending limit set to $12.50.")
        limits = api.get(f"/v1/billing/teams/{team_id}/postpaid/spending-limits").json()
        assert limits["spendingLimits"]["softSl"] == {"val": "1250"}
        page.get_by_label("Monthly spending limit (USD)").fill("")
        page.get_by_role("button", name="Save limit").click()
        expect(page.get_by_role("status")).to_contain_text("Spending limit removed.")
        limits = api.get(f"/v1/billing/teams/{team_id}/postpaid/spending-limits").json()
        assert "softSl" not in limits["spendingLimits"]
