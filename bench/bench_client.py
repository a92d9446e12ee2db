"""SDK benchmark: what ``keyplane.client`` adds over a bare httpx2 client, per call, against a real
``keyplane serve control`` process (SQLite) on loopback.

Three calls, each made ROUNDS times in alternation by both clients (so load drifts hit both
alike): the management-key validation (a small GET), one ListApiKeys page of 100 keys (decoding
100 typed ``ApiKey`` objects against ``response.json()``), and a CreateApiKey (both with an
Idempotency-Key, which costs the server a stored answer). Reports p50 and p90
per call and the SDK/bare ratio of the medians; the ratios are the figures to read, the absolute
times depend on the machine's load.

Prints a Markdown report on stdout. Run from the repository root:
``.venv/bin/python bench/bench_client.py`` (BENCH_ROUNDS shrinks the run)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as harness
import httpx2

from keyplane.client import Client

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "300"))
PAGE = 100


def timed(call: Callable[[], Any]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        dep = harness.Deployment(Path(root))
        try:
            dep.start_control()
            team_id, secret = dep.create_team("bench")
            harness.populate(dep, team_id, PAGE)
            bare = httpx2.Client(
                base_url=dep.control_url,
                headers={"Authorization": f"Bearer {secret}"},
                timeout=30,
            )
            sdk = Client(dep.control_url, secret, team_id=team_id)
            calls: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
                "validation (GET)": (
                    lambda: bare.get("/auth/management-keys/validation").json(),
                    sdk.validate_management_key,
                ),
                f"ListApiKeys, {PAGE} keys": (
                    lambda: bare.get(
                        f"/auth/teams/{team_id}/api-keys", params={"pageSize": PAGE}
                    ).json(),
                    lambda: sdk.list_api_keys_page(page_size=PAGE),
                ),
                "CreateApiKey": (
                    lambda: bare.post(
                        f"/auth/teams/{team_id}/api-keys",
                        json={"name": "bench"},
                        headers={"Idempotency-Key": str(uuid.uuid4())},  # as the SDK sends
                    ).json(),
                    lambda: sdk.create_api_key("bench"),
                ),
            }
            rows = []
            for name, (plain, typed) in calls.items():
                plain(), typed()  # warm both connections
                bare_times: list[float] = []
                sdk_times: list[float] = []
                for _ in range(ROUNDS):
                    bare_times.append(timed(plain))
                    sdk_times.append(timed(typed))
                b50, s50 = harness.percentile(bare_times, 50), harness.percentile(sdk_times, 50)
                rows.append(
                    [
                        name,
                        harness.ms(b50),
                        harness.ms(harness.percentile(bare_times, 90)),
                        harness.ms(s50),
                        harness.ms(harness.percentile(sdk_times, 90)),
                        f"{s50 / b50:.2f}",
                    ]
                )
                print(f"{name}: done", file=sys.stderr)
            bare.close()
            sdk.close()
        finally:
            dep.stop_all()
    print(harness.header(f"SDK vs bare httpx2 ({ROUNDS} calls each, alternating)"))
    print(
        harness.table(
            ["call", "bare p50", "bare p90", "SDK p50", "SDK p90", "SDK/bare (p50)"], rows
        )
    )
    print(harness.footer())


if __name__ == "__main__":
    main()
