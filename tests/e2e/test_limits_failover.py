"""Rate limits through Redis faults, measured as clients see them, on the trial layout.

Two gateway replicas of one cluster share a real Redis; clients spread over both send
back-to-back requests on one key while Redis is SIGKILLed and restarted (it comes back empty) or
SIGSTOPped and continued (it hangs with every connection open). Every window of the limit is then
checked from the clients' own timestamps against the bound docs/architecture.md proves:

* ``local-strict``: at most the limit, in every window;
* ``local``: at most ``limit + (replicas - 1) * (limit // replicas)`` in a window that overlaps
  the outage (or a stretch in which a loaded machine's slow reply put a replica on its policy),
  and at most the limit in every other one — the recovery included;

and at least 90 % of the limit is used outside the outage. qpm runs on a shortened minute
(``limiter.window_scale``) so that several of its windows pass in a bounded time.

The window check is sound: a request admitted by the gateway was admitted between its send and
its receive time on the client, so only the 200s whose whole interval lies inside a window are
counted in it (tests/support/load.py), and client-side timing can hide an excess, never invent
one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from tests.support.load import Shot, count, loaded_key, metric, run_load
from tests.support.procs import OPERATOR, Deployment, wait_for
from tests.support.redis import RedisServer, require_redis_server

pytestmark = pytest.mark.slow

REPLICAS = 2
TIMEOUT = 0.5  # limiter.redis_timeout: how long a decision may wait on a hung Redis
# Enough to keep both replicas overloaded, few enough that refusals do not starve a small
# machine's CPU (the gateways, the model server and these clients share it).
CLIENTS = 12
# The least hand-back after a replica's return: two probe intervals (0.5 s) and one replay's
# patience (RedisLimiter: max(1 s, 4 timeouts)).
HAND_BACK = 2 * 0.5 + max(1.0, 4 * TIMEOUT)
# A model without team x model limits, so that the key's limit is the only one.
CHAT = {"model": "grok-3-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


@dataclass(frozen=True)
class Scenario:
    policy: str
    fault: str  # "kill": SIGKILL then a fresh start; "stop": SIGSTOP then SIGCONT
    limit_name: str  # "qps" or "qpm"
    limit: int
    scale: float  # limiter.window_scale

    @property
    def window(self) -> float:
        return (1.0 if self.limit_name == "qps" else 60.0) * self.scale

    @property
    def share(self) -> int:
        return self.limit // REPLICAS

    def bound(self, overlaps_outage: bool) -> int:
        """The most a window may hold: docs/architecture.md, "Limits through Redis faults"."""
        if self.policy == "local" and overlaps_outage:
            return self.limit + (REPLICAS - 1) * self.share
        return self.limit


SCENARIOS = [
    Scenario("local-strict", "kill", "qps", 20, 1.0),
    Scenario("local-strict", "stop", "qps", 20, 1.0),
    Scenario("local", "kill", "qps", 20, 1.0),
    Scenario("local", "stop", "qps", 20, 1.0),
    Scenario("local-strict", "kill", "qpm", 60, 0.05),  # a 3 s "minute"
    Scenario("local", "stop", "qpm", 60, 0.05),
]


@dataclass
class Cluster:
    dep: Deployment
    redis: RedisServer
    urls: list[str]


@pytest.fixture(scope="module")
def clusters(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[tuple[str, float], Cluster]]:
    """One cluster (control plane, model server, two gateways, own Redis) per policy and scale,
    started when a scenario first needs it."""
    started: dict[tuple[str, float], Cluster] = {}
    yield started
    for cluster in started.values():
        cluster.dep.stop_all()
        cluster.redis.close()  # SIGKILL ends a stopped process too


def cluster_for(
    clusters: dict[tuple[str, float], Cluster], root: Path, scenario: Scenario
) -> Cluster:
    key = (scenario.policy, scenario.scale)
    if key in clusters:
        return clusters[key]
    redis = RedisServer(require_redis_server())
    redis.start()
    dep = Deployment(
        root,
        clusters=["us-east-1"],
        extra_config=(
            "[limiter]\n"
            'backend = "redis"\n'
            f'redis_url = "{redis.url}"\n'
            f'failure_policy = "{scenario.policy}"\n'
            f"replicas = {REPLICAS}\n"
            f"redis_timeout = {TIMEOUT}\n"
            f"window_scale = {scenario.scale}\n"
        ),
    )
    cluster = clusters[key] = Cluster(dep, redis, [])
    dep.start_control()
    dep.start_models()
    cluster.urls = [dep.start_gateway("us-east-1", replica=r).url for r in range(REPLICAS)]
    return cluster


def limiter_states(urls: Sequence[str]) -> list[str]:
    return [str(httpx2.get(u + "/healthz", timeout=5).json()["limiter"]) for u in urls]


def windows(shots: Sequence[Shot], window: float) -> Iterator[tuple[float, int]]:
    """(start, 200s certainly admitted in [start, start + window)) for every admitted send time;
    the worst window of any placement starts at one of them."""
    admitted = sorted((s.sent, s.received) for s in shots if s.status == 200)
    for start, _ in admitted:
        end = start + window
        yield start, sum(1 for sent, recv in admitted if sent >= start and recv < end)


class Watch(threading.Thread):
    """Polls each replica's transition counters, to find every stretch a replica spent on its
    policy — the outage the test causes, and any a loaded machine causes on its own (a reply
    slower than the timeout): for ``local`` those windows get the switch's bound too."""

    def __init__(self, urls: Sequence[str]) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.stopping = threading.Event()
        self.stretches: list[tuple[float, float]] = []

    def counters(self) -> list[tuple[float, float]]:
        pages = [httpx2.get(u + "/metrics", headers=OPERATOR, timeout=5).text for u in self.urls]
        return [
            (
                metric(page, 'keyplane_ratelimit_transitions_total{to="down"}'),
                metric(page, 'keyplane_ratelimit_transitions_total{to="up"}'),
            )
            for page in pages
        ]

    def run(self) -> None:
        last_at, last = time.monotonic(), self.counters()
        while not self.stopping.wait(0.05):
            try:
                now = self.counters()
            except httpx2.HTTPError:  # unknown: count the stretch as switched, the safe side
                now = [(-1.0, -1.0)]
            at = time.monotonic()
            # Went down or came back since the last poll, or is down now: a decision may have
            # waited up to the timeout before the switch.
            if now != last or any(down > up for down, up in now):
                self.stretches.append((last_at - TIMEOUT, at))
            last_at, last = at, now

    def overlaps(self, start: float, end: float) -> bool:
        return any(start < hi and end > lo for lo, hi in self.stretches)


def admitted_in(shots: Sequence[Shot], start: float, end: float) -> int:
    """The 200s sent in [start, end): a request's admission follows its send within its
    latency, so over several windows this counts what the span admitted, give or take an edge."""
    return sum(1 for s in shots if s.status == 200 and start <= s.sent < end)


@pytest.mark.parametrize(
    "scenario", SCENARIOS, ids=[f"{s.policy}-{s.fault}-{s.limit_name}" for s in SCENARIOS]
)
def test_limits_hold_through_a_redis_fault(
    clusters: dict[tuple[str, float], Cluster],
    tmp_path_factory: pytest.TempPathFactory,
    scenario: Scenario,
) -> None:
    cluster = cluster_for(clusters, tmp_path_factory.mktemp("failover"), scenario)
    urls, redis = cluster.urls, cluster.redis
    secret = loaded_key(cluster.dep, urls, **{scenario.limit_name: scenario.limit})
    w = scenario.window
    # Steady state, the outage (local-strict: one window of refusals, then the shares), and the
    # recovery (the hand-back, then two windows and more of steady state again).
    before, outage, after = max(4.0, 3 * w), max(3.0, 1.7 * w), max(w, HAND_BACK) + max(3.0, 2 * w)
    total = before + outage + after + 1.0

    shots: list[Shot] = []
    load = threading.Thread(
        target=lambda: shots.extend(
            run_load(urls, secret, clients=CLIENTS, seconds=total, body=CHAT)
        )
    )
    watch = Watch(urls)
    watch.start()
    started = time.monotonic()
    load.start()
    try:
        time.sleep(before)  # the scenario's timeline, not a wait for a condition
        fault_at = time.monotonic()
        redis.stop() if scenario.fault == "kill" else redis.pause()
        try:
            wait_for(
                lambda: limiter_states(urls) == ["degraded"] * REPLICAS,
                what="both replicas on their failure policy",
            )
            time.sleep(max(0.0, fault_at + outage - time.monotonic()))
        finally:
            restore_at = time.monotonic()
            redis.start() if scenario.fault == "kill" else redis.resume()
        wait_for(lambda: limiter_states(urls) == ["ok"] * REPLICAS, what="both back on Redis")
        back_at = time.monotonic()
    finally:
        load.join(timeout=total + 60)
        watch.stopping.set()
        watch.join(timeout=30)
    ended = max(s.received for s in shots)
    assert restore_at - fault_at >= outage - 0.01

    assert count(shots, -1) == 0
    assert {s.status for s in shots} <= {200, 429}, "no 5xx through the outage"

    # Every window, against the policy's bound.
    for start, admitted in windows(shots, w):
        overlaps = (start < back_at and start + w > fault_at) or watch.overlaps(start, start + w)
        assert admitted <= scenario.bound(overlaps), (start - started, admitted, scenario)

    # Utilisation outside the switch: before the fault (after a second for the clients to
    # connect), and from the end of the hand-back to the end. One window of
    # each span is allowed for its edges.
    for first, last in ((started + 1.0, fault_at), (back_at + max(w, HAND_BACK), ended)):
        spans = (last - first) / w
        used = admitted_in(shots, first, last)
        assert used >= 0.9 * scenario.limit * (spans - 1), (used, spans, scenario)

    # The state changes show in each replica's metrics; no decision waited much past the timeout
    # (1 s for a loaded machine's event loop; tests/contract/test_ratelimit_failover.py holds the
    # tight bound).
    for url in urls:
        page = httpx2.get(url + "/metrics", headers=OPERATOR, timeout=5).text
        assert metric(page, 'keyplane_ratelimit_transitions_total{to="down"}') >= 1
        assert metric(page, 'keyplane_ratelimit_transitions_total{to="up"}') >= 1
        assert metric(page, "keyplane_ratelimit_redis_up") == 1
        waits = metric(page, "keyplane_ratelimit_redis_wait_seconds_count")
        in_time = metric(page, 'keyplane_ratelimit_redis_wait_seconds_bucket{le="1.5"}')
        assert waits > 0
        assert in_time == waits, f"{waits - in_time} decisions waited over {TIMEOUT + 1.0} s"
