"""Issue #14.1: a body built to make a backtracking pattern quadratic stalls nothing.

Sixty-four kilobytes of escaped quotes once cost the control plane 18 s of event-loop time before
authentication; a list call beside it took 19 s. Now the body is answered, by an unauthenticated
caller and by an authenticated one, while a concurrent list call stays within a small multiple of
its normal time.
"""

from __future__ import annotations

import threading
import time

import httpx2

from tests.support.procs import Deployment

# A JSON-ish body just under the 64 KiB cap: an unterminated string of escaped quotes.
HOSTILE = b'{"name": "' + b'\\"' * 32_000
SLOWDOWN = 50  # how many times its slowest normal duration a list call may take under attack


def _list_duration(client: httpx2.Client, team: str) -> float:
    began = time.perf_counter()
    response = client.get(f"/auth/teams/{team}/api-keys")
    assert response.status_code == 200, response.text
    return time.perf_counter() - began


def test_quadratic_body_is_answered_without_stalling_the_plane(
    module_deployment: Deployment,
) -> None:
    dep = module_deployment
    team, secret = dep.create_team("dos")
    assert len(HOSTILE) < dep.settings().max_body_bytes
    auth = {"Authorization": f"Bearer {secret}"}
    with httpx2.Client(base_url=dep.control_url, headers=auth, timeout=60.0) as client:
        normal = max(_list_duration(client, team) for _ in range(10))
        answers: list[int] = []

        def attack(headers: dict[str, str]) -> None:
            with httpx2.Client(base_url=dep.control_url, timeout=60.0) as hostile:
                response = hostile.post(
                    f"/auth/teams/{team}/api-keys",
                    content=HOSTILE,
                    headers={"content-type": "application/json", **headers},
                )
                answers.append(response.status_code)

        attackers = [
            threading.Thread(target=attack, args=(headers,))
            for headers in ({}, {"Authorization": "Bearer nope"}, auth, auth)
        ]
        for thread in attackers:
            thread.start()
        during: list[float] = []
        while len(during) < 5 or (
            any(thread.is_alive() for thread in attackers) and len(during) < 200
        ):
            during.append(_list_duration(client, team))
        for thread in attackers:
            thread.join(timeout=60.0)
    assert sorted(answers) == [400, 400, 401, 401]
    assert max(during) <= SLOWDOWN * normal, (max(during), normal)
