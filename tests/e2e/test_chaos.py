"""Chaos on the production layout (``keyplane trial``: PostgreSQL, Redis, two control planes, two
clusters of two gateway replicas, limits shared in Redis under the ``local`` failure policy).

Under steady load from many keys, a control plane, a gateway replica, Redis and PostgreSQL are
SIGKILLed in turn (which one, in what order and when drawn from a seeded random: the seed is
printed, and ``KEYPLANE_CHAOS_SEED`` replays it) and restarted by the supervisor, while keys are
created, updated, rotated and deleted through either control plane. Then:

* every acknowledged mutation is in the store, reads ``true`` on every cluster, and every gateway
  replica enforces it (the newest secret answers with the newest name; a deleted key's does not);
* the change log is gap-free and holds a revision for every acknowledged mutation;
* no key was admitted beyond its limit (each cluster counts its own) in any window (the sound
  any-window check of tests/support/load.py), but by the ``local`` policy's allowance
  (docs/deployment.md, "When Redis is away": ``L + (N - 1) * (L // N)``) in a window a replica
  spent on its policy;
* no inference request was answered 5xx (the model server is never killed), and no management
  request but while PostgreSQL was down, and then 503;
* the usage RPC counts, per key and status, every answer the clients received, and more only by
  requests whose client lost the answer (docs/usage.md: counted before the last bytes go out).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import func, select

from tests.support.chaos import (
    FAULT_KINDS,
    WILDCARD,
    Attempt,
    Expected,
    Fault,
    Hit,
    LimiterWatch,
    Load,
    Mutator,
    kill_and_recover,
    most_in_a_window,
    unanswered_may_be_served,
)
from tests.support.procs import METRICS_TOKEN, wait_for
from tests.support.trial import Trial, running_trial

pytestmark = pytest.mark.slow

REPLICAS = 2  # per cluster, in the trial
REDIS_TIMEOUT = 0.25  # limiter.redis_timeout, the default the trial runs with
LOAD_KEYS = 12
QPS = 3  # each load key's limit: well under what the clients offer it
CLIENTS = 8
CHAOS_SECONDS = 60.0  # faults start until then (each kind at least once): the chaos is bounded
WARM_UP, CALM = 3.0, 4.0


@pytest.fixture
def trial(tmp_path: Path) -> Iterator[Trial]:
    # The operators' token, for the gateways' /metrics (the limiter's transition counters).
    with running_trial(tmp_path / "console", {"KEYPLANE_METRICS_TOKEN": METRICS_TOKEN}) as t:
        yield t


def create_load_keys(trial: Trial, team: str) -> tuple[list[str], list[str]]:
    """``LOAD_KEYS`` keys of ``QPS``, known to every gateway replica: (ids, secrets)."""
    ids, secrets = [], []
    with trial.client(0) as client:
        for i in range(LOAD_KEYS):
            r = client.post(
                f"/auth/teams/{team}/api-keys",
                json={"name": f"load-{i}", "acls": WILDCARD, "qps": QPS},
            )
            assert r.status_code == 200, r.text
            ids.append(r.json()["apiKeyId"])
            secrets.append(r.json()["apiKey"])
    for key_id in ids:
        wait_for(partial(propagated, trial, key_id), timeout=60, what=f"{key_id} everywhere")
    return ids, secrets


def propagated(trial: Trial, key_id: str) -> bool:
    with trial.client(0) as client:
        r = client.get(f"/auth/api-keys/{key_id}/propagation")
    return r.status_code == 200 and all(r.json()["icPropagation"].values())


def listed(trial: Trial, index: int, team: str) -> dict[str, dict[str, Any]]:
    """Every key of ``team`` as control plane ``index`` lists it, page by page."""
    keys: dict[str, dict[str, Any]] = {}
    token = None
    with trial.client(index) as client:
        for _ in range(100):
            params: dict[str, Any] = {"pageSize": 100}
            if token:
                params["paginationToken"] = token
            r = client.get(f"/auth/teams/{team}/api-keys", params=params)
            assert r.status_code == 200, r.text
            keys |= {k["apiKeyId"]: k for k in r.json()["apiKeys"]}
            token = r.json().get("paginationToken")
            if not token:
                return keys
    raise AssertionError("more than 100 pages of keys")


def usage_by_key_and_status(trial: Trial, team: str) -> Counter[tuple[str, str]]:
    now = datetime.now(UTC)
    body = {
        "analyticsRequest": {
            "timeRange": {
                "startTime": (now - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S"),
                "endTime": (now + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S"),
                "timezone": "Etc/GMT",
            },
            "timeUnit": "TIME_UNIT_NONE",
            "values": [{"name": "requests", "aggregation": "AGGREGATION_SUM"}],
            "groupBy": ["api_key_id", "status"],
        }
    }
    with trial.client(0) as client:
        r = client.post(f"/v1/billing/teams/{team}/usage", json=body)
    assert r.status_code == 200, r.text
    out: Counter[tuple[str, str]] = Counter()
    for series in r.json()["timeSeries"]:
        out[tuple(series["group"])] += int(sum(p["values"][0] for p in series["dataPoints"]))
    return out


def cluster_of(hit: Hit) -> str:
    """``gateway us-east-1/0`` -> ``us-east-1``."""
    return hit.gateway.removeprefix("gateway ").split("/")[0]


def status_group(status: int) -> str:
    return "429" if status == 429 else f"{status // 100}xx"


def down(faults: Sequence[Fault], kind: str, start: float, end: float) -> bool:
    return any(f.kind == kind and start < f.back and end > f.killed for f in faults)


def table(
    seed: int,
    started: float,
    faults: Sequence[Fault],
    hits: Sequence[Hit],
    attempts: Sequence[Attempt],
) -> str:
    lines = [f"chaos seed {seed}", "", "faults injected (t: seconds into the load):"]
    lines += [
        f"  t={f.killed - started:6.1f}  {f.kind:16} {f.target:24} back after {f.downtime:5.1f} s"
        for f in faults
    ]
    by_kind = Counter(f.kind for f in faults)
    lines.append("  total: " + ", ".join(f"{k} {by_kind[k]}" for k in FAULT_KINDS))
    lines += ["", "inference requests (clients' view):"]
    outcome = Counter(h.error or str(h.status) for h in hits)
    lines += [f"  {k:24} {v:7}" for k, v in sorted(outcome.items())]
    lines.append(f"  {'served (200)':24} {outcome['200']:7} of {len(hits)}")
    lines += ["", "management requests (clients' view):"]
    per_op = Counter((a.op, a.error or str(a.status)) for a in attempts)
    lines += [f"  {op:8} {k:16} {v:7}" for (op, k), v in sorted(per_op.items())]
    return "\n".join(lines)


@pytest.mark.timeout(600)  # the trial's start on a loaded machine, then at most ~3 min of chaos
def test_chaos_on_the_production_layout_loses_nothing(trial: Trial, tmp_path: Path) -> None:
    seed = int(os.environ.get("KEYPLANE_CHAOS_SEED") or random.randrange(2**32))
    print(f"\nchaos seed {seed} (KEYPLANE_CHAOS_SEED={seed} replays this schedule)")
    rng = random.Random(seed)
    team = trial.team()
    load_ids, load_secrets = create_load_keys(trial, team)
    gateway_urls = list(trial.gateways.values())

    watch = LimiterWatch(gateway_urls, REDIS_TIMEOUT)
    watch.start()
    started = time.monotonic()
    load = Load(trial.gateways, load_secrets, clients=CLIENTS, seed=seed).start()
    mutator = Mutator(
        [trial.control_url(i) for i in range(len(trial.ports.control))],
        trial.management_secret(),
        team,
        seed=seed + 1,
    )
    mutator.start()
    faults: list[Fault] = []
    try:
        time.sleep(WARM_UP)  # the schedule's timeline, not a wait for a condition
        chaos_end = time.monotonic() + CHAOS_SECONDS
        while not faults or time.monotonic() < chaos_end:  # every kind at least once
            for kind in rng.sample(FAULT_KINDS, len(FAULT_KINDS)):
                if len(faults) >= len(FAULT_KINDS) and time.monotonic() >= chaos_end:
                    break
                faults.append(kill_and_recover(trial, kind, rng))
                time.sleep(rng.uniform(1.0, 4.0))  # the schedule again
        time.sleep(CALM)  # steady state after the last fault: limits exact again
    finally:
        ended = time.monotonic()
        expected = mutator.finish()
        hits = load.stop()
        watch.stopping.set()
        watch.join(timeout=30)
        print(table(seed, started, faults, hits, mutator.attempts))
        dump(tmp_path / "chaos.json", started, faults, hits, watch.stretches)
    assert {f.kind for f in faults} == set(FAULT_KINDS)
    assert mutator.acknowledged() >= 20, mutator.acknowledged()

    # No 5xx: never from a gateway (its upstream never went down); from a control plane only
    # while PostgreSQL was down, and then 503 (the SDK retries it), not an internal error.
    assert not [h for h in hits if h.status >= 500], "a gateway answered 5xx"
    unexplained = [
        a
        for a in mutator.attempts
        if a.status >= 500 and not down(faults, "PostgreSQL", a.sent, a.received)
    ]
    assert not unexplained, unexplained
    assert {a.status for a in mutator.attempts if a.status >= 500} <= {503}, "a 5xx not 503"

    # Every acknowledged mutation: in the store (both control planes list it), propagated.
    for index in range(len(trial.ports.control)):
        keys = listed(trial, index, team)
        for key in expected.values():
            if key.deleted:
                assert key.key_id not in keys, key
            else:
                got = keys[key.key_id]
                assert (got["name"], got["qps"]) == (key.name, key.qps), (got, key)
    for key in expected.values():
        wait_for(partial(propagated, trial, key.key_id), timeout=60, what=f"{key} propagated")
    check_gateways_enforce(trial, expected.values())
    check_change_log(trial, expected.values())

    # Limits (each cluster counts its own): exact but in a window some replica spent on the
    # failure policy.
    allowance = QPS + (REPLICAS - 1) * (QPS // REPLICAS)
    for i in range(LOAD_KEYS):
        for cluster in trial.ports.gateways:
            over = most_in_a_window(
                [h for h in hits if h.key == i and cluster_of(h) == cluster],
                1.0,
                lambda start, end: allowance if watch.overlaps(start, end) else QPS,
            )
            assert not over, [
                (i, cluster, round(t - started, 3), n, bound, near(hits, i, t, started))
                for t, n, bound in over[:3]
            ]
    served = sum(1 for h in hits if h.status == 200)
    assert served >= 0.25 * QPS * LOAD_KEYS * (ended - started), served  # the load was steady

    check_usage(trial, team, load_ids, hits)


def near(hits: Sequence[Hit], key: int, t: float, started: float) -> list[tuple[Any, ...]]:
    """The 200s of ``key`` sent in [t, t + 1): where, and when (seconds into the load)."""
    return [
        (h.gateway, round(h.sent - started, 3), round(h.received - started, 3))
        for h in hits
        if h.key == key and h.status == 200 and t <= h.sent < t + 1
    ]


def dump(
    path: Path,
    started: float,
    faults: Sequence[Fault],
    hits: Sequence[Hit],
    stretches: Sequence[tuple[float, float]],
) -> None:
    """The run's raw record, for a failure's post-mortem (pytest keeps the last runs' tmp)."""
    path.write_text(
        json.dumps(
            {
                "faults": [
                    [f.kind, f.target, f.killed - started, f.back - started] for f in faults
                ],
                "stretches": [[lo - started, hi - started] for lo, hi in stretches],
                "hits": [
                    [h.key, h.gateway, h.sent - started, h.received - started, h.status, h.error]
                    for h in hits
                ],
            }
        )
    )
    print(f"raw record: {path}")


def check_gateways_enforce(trial: Trial, keys: Iterable[Expected]) -> None:
    """Every replica: the newest secret of a live key answers with its newest name; a deleted
    key's last secret is refused."""
    for name, url in trial.gateways.items():
        with httpx2.Client(base_url=url, timeout=10) as http:
            for key in keys:
                r = http.get("/v1/api-key", headers={"Authorization": f"Bearer {key.secret}"})
                if key.deleted:
                    assert r.status_code in (400, 401), (name, key, r.status_code)
                else:
                    assert r.status_code == 200, (name, key, r.text)
                    assert r.json()["name"] == key.name, (name, key, r.json())


def check_change_log(trial: Trial, keys: Iterable[Expected]) -> None:
    from keyplane.storage.db import Database
    from keyplane.storage.tables import change_log, revision_counter

    db = Database(trial.database_url, pool_size=1)
    try:
        with db.read() as conn:
            revisions = list(conn.scalars(select(change_log.c.revision).order_by("revision")))
            counter = conn.scalar(select(revision_counter.c.value))
            per_key: dict[str, int] = dict(
                conn.execute(
                    select(change_log.c.api_key_id, func.count()).group_by(change_log.c.api_key_id)
                ).all()
            )
    finally:
        db.dispose()
    assert revisions == list(range(revisions[0], revisions[0] + len(revisions))), "a gap"
    assert revisions[-1] == counter
    for key in keys:
        assert per_key.get(key.key_id, 0) >= len(key.acks), (key, per_key.get(key.key_id))


def check_usage(trial: Trial, team: str, load_ids: list[str], hits: Sequence[Hit]) -> None:
    """Counted = answered, per key and status group, but for requests whose client lost the
    answer (they may have been counted as their last bytes went out)."""
    answered: Counter[tuple[str, str]] = Counter()
    lost: Counter[str] = Counter()
    for h in hits:
        if h.status > 0:
            answered[(load_ids[h.key], status_group(h.status))] += 1
        elif unanswered_may_be_served(h.error):
            lost[load_ids[h.key]] += 1

    def all_counted() -> Counter[tuple[str, str]] | None:
        counted = usage_by_key_and_status(trial, team)
        return counted if all(counted[k] >= n for k, n in answered.items()) else None

    counted = wait_for(all_counted, timeout=60, what="every answered request counted")
    for key_id in load_ids:
        extra = sum(counted[g] - answered[g] for g in counted if g[0] == key_id)
        assert 0 <= extra <= lost[key_id], (key_id, extra, lost[key_id])
