"""Spending limits and budgets enforced at every cluster through the change feed.

The overshoot test drives one key over its budget on two clusters at once and measures what got
through between the request that crossed the budget and the moment both clusters refused.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx2
import pytest

from tests.support.gateway import WILDCARD, Key, Stack, Team, chat_body, start_stack, stop_stack
from tests.support.procs import wait_for
from tests.support.usage import wait_counted

CLUSTERS = ("us-east-1", "eu-west-1")
# Every request to "metered" costs the same: prompt "Say hello" (2 tokens) and 8 completion
# tokens at 0.1 cent each = 1 cent.
CONFIG = """
[[models]]
name = "metered"
[models.prices]
prompt_text_token_price = "10000000"
completion_text_token_price = "10000000"
"""
REQUEST = chat_body("metered", max_tokens=8)
CENT = 10**8  # cost units per cent
#: The aim of the issue: no more than this many seconds of traffic after the crossing request.
OVERSHOOT_AIM = 2.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("usage-spend"), CLUSTERS, extra_config=CONFIG)
    yield running
    stop_stack(running)


@pytest.fixture
def team(stack: Stack) -> Iterator[Team]:
    fresh = stack.new_team("spend")
    yield fresh
    fresh.close()


def request_cost(stack: Stack, key: Key) -> int:
    """Cents one REQUEST costs, from its own usage."""
    with stack.client(key.secret) as client:
        usage = client.post("/v1/chat/completions", json=REQUEST).json()["usage"]
    units = (usage["prompt_tokens"] + usage["completion_tokens"]) * 10_000_000
    assert units % CENT == 0
    return int(units // CENT)


@dataclass
class Hammer:
    """Threads sending REQUEST on every cluster until each cluster refuses the key."""

    stack: Stack
    key: Key
    per_cluster: int = 2
    ok: list[float] = field(default_factory=list)  # monotonic times of answers received
    refused_at: dict[str, float] = field(default_factory=dict)
    messages: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, cluster: str, deadline: float) -> None:
        with self.stack.client(self.key.secret, cluster) as client:
            while time.monotonic() < deadline and cluster not in self.refused_at:
                response = client.post("/v1/chat/completions", json=REQUEST)
                at = time.monotonic()
                with self.lock:
                    if response.status_code == 200:
                        self.ok.append(at)
                    else:
                        assert response.status_code == 403, response.text
                        self.messages.add(response.json()["error"])
                        self.refused_at.setdefault(cluster, at)

    def run(self, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        threads = [
            threading.Thread(target=self._run, args=(cluster, deadline))
            for cluster in CLUSTERS
            for _ in range(self.per_cluster)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert set(self.refused_at) == set(CLUSTERS), "every cluster ends up refusing the key"


def key_info(stack: Stack, key: Key, cluster: str) -> dict[str, object]:
    with stack.client(key.secret, cluster) as client:
        info: dict[str, object] = client.get("/v1/api-key").json()
    return info


def test_a_key_over_its_budget_is_refused_on_every_cluster_within_the_aim(
    stack: Stack, team: Team
) -> None:
    key = team.create_key(WILDCARD)
    cents = request_cost(stack, key)
    budget = 60 * cents
    team.update_key(key, "budget", budget={"cents": str(budget), "period": "DAY"})
    hammer = Hammer(stack, key)
    hammer.run()
    assert any("budget" in m for m in hammer.messages), hammer.messages
    served = 1 + len(hammer.ok)  # with the request that priced it
    # The crossing request is the one that brought the spend to the budget.
    crossing = math.ceil(budget / cents) - 1  # index into hammer.ok (the first was the pricing one)
    assert served > crossing, "the budget was reached"
    crossed_at = sorted(hammer.ok)[crossing - 1] if crossing > 0 else min(hammer.ok)
    window = max(hammer.refused_at.values()) - crossed_at
    excess = served - math.ceil(budget / cents)
    rate = len(hammer.ok) / (max(hammer.ok) - min(hammer.ok))
    print(
        f"\novershoot: {excess} requests ({excess * cents} cents) over a budget of {budget} "
        f"cents; both clusters refused {window:.3f} s after the crossing request "
        f"at {rate:.0f} requests/s"
    )
    assert window < OVERSHOOT_AIM
    assert excess <= rate * OVERSHOOT_AIM
    totals = wait_counted(stack.dep, team.team_id, served, status=200)
    assert totals.cost == served * cents * CENT
    for cluster in CLUSTERS:
        info = key_info(stack, key, cluster)
        assert (info["api_key_blocked"], info["team_blocked"]) == (True, False)
    # A raised budget unblocks the key everywhere, through the feed.
    team.update_key(key, "budget", budget={"cents": str(budget * 10), "period": "DAY"})
    for cluster in CLUSTERS:
        with stack.client(key.secret, cluster) as client:
            assert client.post("/v1/chat/completions", json=REQUEST).status_code == 200
    events = team.mgmt.http.get(f"/audit/teams/{team.team_id}/events").json()["events"]
    assert "BlockApiKey" in {e["operation"] for e in events}
    shown = team.mgmt.http.get(f"/auth/teams/{team.team_id}/api-keys").json()["apiKeys"][0]
    assert shown["budget"] == {"cents": str(budget * 10), "period": "DAY"}


def test_a_team_at_its_spending_limit_is_refused_everywhere_until_it_is_raised(
    stack: Stack, team: Team
) -> None:
    key = team.create_key(WILDCARD)
    cents = request_cost(stack, key)
    path = f"/v1/billing/teams/{team.team_id}/postpaid/spending-limits"
    assert (
        team.mgmt.http.post(
            path, json={"desiredSoftSpendingLimit": {"val": str(20 * cents)}}
        ).status_code
        == 200
    )
    hammer = Hammer(stack, key, per_cluster=1)
    hammer.run()
    (message,) = hammer.messages
    assert message.startswith(f"Your team {team.team_id} has either used all available credits")
    for cluster in CLUSTERS:
        info = key_info(stack, key, cluster)
        assert (info["team_blocked"], info["api_key_blocked"]) == (True, False)
        with stack.client(key.secret, cluster) as client:
            me = client.get("/v1/me").json()
            assert me["team_blocked"] is True
    # A key made while the team is blocked is blocked from birth.
    late = team.create_key(WILDCARD)
    with stack.client(late.secret, CLUSTERS[1]) as client:
        assert client.post("/v1/chat/completions", json=REQUEST).status_code == 403
    raised = team.mgmt.http.post(
        path, json={"desiredSoftSpendingLimit": {"val": str(10_000 * cents)}}
    )
    assert raised.status_code == 200

    def works_everywhere() -> bool:
        for cluster in CLUSTERS:
            with stack.client(key.secret, cluster) as client:
                if client.post("/v1/chat/completions", json=REQUEST).status_code != 200:
                    return False
        return True

    wait_for(works_everywhere, timeout=10.0, what="the raised limit unblocks every cluster")
    operations = {
        e["operation"]
        for e in team.mgmt.http.get(f"/audit/teams/{team.team_id}/events").json()["events"]
    }
    assert {"SetSpendingLimit", "BlockTeam", "UnblockTeam"} <= operations
    assert httpx2.get(stack.dep.control_url + "/healthz").status_code == 200
