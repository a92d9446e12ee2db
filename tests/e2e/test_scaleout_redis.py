"""Two gateway replicas of one cluster sharing their limits through a real Redis server.

The contract's any-window bound must hold for the cluster as a whole; while Redis is down the
configured failure policy applies (here ``local``: each replica enforces half of each limit) and
nothing fails; when Redis returns, limits are exact again.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import httpx2
import pytest

from tests.support.load import (
    assert_qps_held,
    count,
    loaded_key,
    max_certainly_admitted,
    run_load,
)
from tests.support.procs import OPERATOR, Deployment, wait_for
from tests.support.redis import RedisServer, running_redis

pytestmark = pytest.mark.slow

CHAT = {"model": "grok-3", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[tuple[Deployment, list[str]]]:
    dep = Deployment(
        tmp_path_factory.mktemp("redis"),
        clusters=["us-east-1"],
        extra_config=(
            "[limiter]\n"
            'backend = "redis"\n'
            f'redis_url = "{redis_server.url}"\n'
            'failure_policy = "local"\n'
            "replicas = 2\n"
            # These tests are about the steady state (and a Redis that refuses connections): a
            # loaded machine's slow answer must not count as an outage (tests/e2e/
            # test_limits_failover.py is about outages).
            "redis_timeout = 2.0\n"
        ),
    )
    try:
        dep.start_control()
        dep.start_models()
        urls = [dep.start_gateway("us-east-1", replica=r).url for r in (0, 1)]
        yield dep, urls
    finally:
        dep.stop_all()


def test_qps_holds_for_the_cluster_as_a_whole(cluster: tuple[Deployment, list[str]]) -> None:
    dep, urls = cluster
    secret = loaded_key(dep, urls, qps=20, qpm=300)
    shots = run_load(urls, secret, clients=32, seconds=6, body=CHAT)
    assert_qps_held(shots, 20)


def test_qpm_holds_across_replicas(cluster: tuple[Deployment, list[str]]) -> None:
    dep, urls = cluster
    secret = loaded_key(dep, urls, qpm=60)
    shots = run_load(urls, secret, clients=16, seconds=4, body=CHAT)
    # The whole run fits in one 60 s window: exactly the limit is admitted.
    assert count(shots, 200) == 60


def test_tpm_is_shared_across_replicas(cluster: tuple[Deployment, list[str]]) -> None:
    dep, urls = cluster
    secret = loaded_key(dep, urls, tpm="1000")
    body = {**CHAT, "max_tokens": 280}
    charged = 0
    statuses = []
    for i in range(8):
        r = httpx2.post(
            urls[i % 2] + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=10,
        )
        statuses.append(r.status_code)
        if r.status_code == 200:
            assert charged <= 1000, "admitted although the window already exceeded tpm"
            charged += r.json()["usage"]["total_tokens"]
        else:
            assert r.status_code == 429
            assert charged > 1000, "refused before the window exceeded tpm"
            assert "tpm" in r.json()["error"]
    assert 429 in statuses


def test_redis_down_applies_the_policy_then_recovers(
    cluster: tuple[Deployment, list[str]], redis_server: RedisServer
) -> None:
    dep, urls = cluster
    secret = loaded_key(dep, urls, qps=20)
    redis_server.stop()
    try:
        down = run_load(urls, secret, clients=16, seconds=3, body=CHAT)
        assert all(httpx2.get(u + "/healthz").json()["limiter"] == "degraded" for u in urls)
    finally:
        redis_server.start()
    assert {s.status for s in down} <= {200, 429}, "no 5xx while Redis is down"
    # local policy: each of the two replicas enforces 20 / 2 = 10 per second on its own.
    assert max_certainly_admitted(down, 1.0) <= 20
    assert count(down, 200) > 0
    metrics = [httpx2.get(u + "/metrics", headers=OPERATOR).text for u in urls]
    assert any("keyplane_ratelimit_failures_total" in m for m in metrics)

    # Redis is back (and empty). Once each replica has used it again, the shared bound is exact.
    def back_on_redis(url: str) -> bool:
        httpx2.post(
            url + "/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {secret}"},
        )
        return bool(httpx2.get(url + "/healthz").json()["limiter"] == "ok")

    for url in urls:
        wait_for(functools.partial(back_on_redis, url), what="replica back on Redis")
    secret_after = loaded_key(dep, urls, qps=20)
    up = run_load(urls, secret_after, clients=32, seconds=4, body=CHAT)
    assert {s.status for s in up} <= {200, 429}
    assert max_certainly_admitted(up, 1.0) <= 20
    span = max(s.received for s in up) - min(s.sent for s in up)
    assert count(up, 200) >= 0.95 * 20 * (span - 1), (count(up, 200), span)
