"""Bounded load against a gateway, and the sound any-window check of what it admitted.

A request admitted by the server was admitted at some instant between its send and its receive
time on the client. So for a window [t, t + w), the 200s whose whole [send, recv] interval lies
inside it were certainly admitted in it: if that count exceeds the limit, the limiter broke its
bound. (The converse is not checkable from outside, hence "sound", not "complete".)
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx2

from tests.support.management import connect
from tests.support.procs import Deployment, wait_for


@dataclass(frozen=True, slots=True)
class Shot:
    sent: float
    received: float
    status: int


def run_load(
    urls: Sequence[str],
    secret: str,
    *,
    clients: int,
    seconds: float,
    body: dict[str, object],
    path: str = "/v1/chat/completions",
    max_requests: int = 20_000,
    fresh_connections: bool = False,
) -> list[Shot]:
    """``clients`` threads, spread over ``urls``, each sending until ``seconds`` pass; with
    ``fresh_connections``, each request on a connection of its own (none kept alive)."""
    shots: list[Shot] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    budget = [max_requests]

    def client(url: str) -> None:
        mine: list[Shot] = []
        with httpx2.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=10,
            limits=httpx2.Limits(
                max_connections=100, max_keepalive_connections=0 if fresh_connections else 20
            ),
        ) as http:
            while time.monotonic() < deadline:
                with lock:
                    if budget[0] <= 0:
                        break
                    budget[0] -= 1
                sent = time.monotonic()
                try:
                    status = http.post(path, json=body).status_code
                except httpx2.HTTPError:
                    status = -1
                mine.append(Shot(sent, time.monotonic(), status))
        with lock:
            shots.extend(mine)

    threads = [threading.Thread(target=client, args=(urls[i % len(urls)],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 30)
    return shots


def max_certainly_admitted(shots: Sequence[Shot], window: float) -> int:
    """The largest number of 200s certainly admitted within one window of ``window`` seconds."""
    admitted = sorted((s for s in shots if s.status == 200), key=lambda s: s.sent)
    starts = sorted({s.sent for s in admitted})
    best = 0
    for start in starts:
        end = start + window
        count = sum(1 for s in admitted if s.sent >= start and s.received < end)
        best = max(best, count)
    return best


def count(shots: Sequence[Shot], status: int) -> int:
    return sum(1 for s in shots if s.status == status)


def assert_qps_held(shots: Sequence[Shot], qps: int) -> None:
    """A steady overload of a key limited to ``qps``: no window of a second certainly holds more,
    and over the run the limit was used (at least 95 % of it per whole second, less one second
    for the start and the end; at most ``qps`` per started second)."""
    assert count(shots, -1) == 0
    assert {s.status for s in shots} <= {200, 429}
    assert max_certainly_admitted(shots, 1.0) <= qps
    admitted, refused = count(shots, 200), count(shots, 429)
    span = max(s.received for s in shots) - min(s.sent for s in shots)
    assert refused > 5 * admitted, "the load must be a steady overload for the bound below"
    assert admitted <= qps * (span + 1), (admitted, span)
    assert admitted >= 0.95 * qps * (span - 1), (admitted, refused, span)


def loaded_key(dep: Deployment, urls: Sequence[str], **limits: object) -> str:
    """A new team's API key with ``limits`` (e.g. ``qps=20``), once every gateway in ``urls``
    knows it."""
    team, mgmt = dep.create_team(f"team-{len(dep.procs)}-{time.monotonic_ns()}")
    with connect(dep.control_url, mgmt) as c:
        r = c.post(
            f"/auth/teams/{team}/api-keys",
            json={"name": "load", "acls": ["api-key:endpoint:*", "api-key:model:*"], **limits},
        )
        assert r.status_code == 200, r.text
        secret: str = r.json()["apiKey"]
    headers = {"Authorization": f"Bearer {secret}"}

    def known_everywhere() -> bool:
        return all(httpx2.get(u + "/v1/api-key", headers=headers).status_code == 200 for u in urls)

    wait_for(known_everywhere, what="the key on every replica")
    return secret


def metric(text: str, name: str) -> float:
    """The sum of every sample of ``name`` in a Prometheus text page."""
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(text))
