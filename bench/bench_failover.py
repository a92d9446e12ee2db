"""Benchmark of rate limits through Redis faults: the worst window, time to detect, to recover.

Run: ``.venv/bin/python bench/bench_failover.py [--before S] [--outage S] [--after S]``

Two :class:`~keyplane.ratelimit.RedisLimiter` replicas of one cluster (``replicas = 2``, default
settings: 0.25 s timeout, probe backoff 0.05–0.5 s) share a Redis the benchmark starts; 16 tasks
per replica ask for one key's qps = 20 as fast as they can (a steady overload). After ``--before``
seconds Redis is SIGKILLed (and started again, empty, ``--outage`` seconds later) or SIGSTOPped
(and continued); the run goes on for ``--after`` seconds. For every policy and fault:

* worst window: the most admissions in any 1 s window, in steady state (before the fault and
  from one window after both replicas are back), and in the windows that overlap the outage —
  counted from each decision's (asked, answered) interval, so never overstated;
* detect: from the signal to the last replica's first answer by its failure policy;
* recover: from the restart (or SIGCONT) to both replicas deciding through Redis again, and to
  both replicas' ``available`` (what ``/healthz`` reports);
* longest wait: the longest any decision took while Redis hung or died (the timeout bounds it).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import sys
import time
import uuid
from dataclasses import dataclass, field

from _harness import footer, header, stop_servers_on_sigterm, table  # puts the root on sys.path

from keyplane.ratelimit import (
    FailurePolicy,
    RedisLimiter,
    RedisLimiterSettings,
    RequestLimit,
)
from tests.support.redis import RedisServer, require_redis_server

LIMIT = 20
TASKS = 16  # per replica
QPS = RequestLimit("qps", "key:bench:qps", LIMIT, 1.0)


@dataclass
class Run:
    policy: FailurePolicy
    fault: str
    #: (asked, answered, admitted, degraded, replica)
    decisions: list[tuple[float, float, bool, bool, int]] = field(default_factory=list)
    fault_at: float = 0.0
    restore_at: float = 0.0
    back_at: float = 0.0  # both replicas available again

    def worst(self, start: float, end: float) -> int:
        """The most admissions certainly inside one 1 s window starting in [start, end)."""
        admitted = sorted((a, b) for a, b, ok, _, _ in self.decisions if ok)
        asked = [a for a, _ in admitted]
        best = 0
        for i in range(bisect.bisect_left(asked, start), bisect.bisect_left(asked, end)):
            s = asked[i]
            j = bisect.bisect_left(asked, s + 1.0)
            if j - i > 10 * LIMIT:  # allow: far past any bound, no need to be exact
                best = max(best, j - i)
            else:
                best = max(best, sum(1 for _, b in admitted[i:j] if b < s + 1.0))
        return best

    def row(self) -> list[object]:
        first_degraded = [
            min((b for _, b, _, d, r in self.decisions if d and r == i and b >= self.fault_at),
                default=float("nan"))
            for i in (0, 1)
        ]  # fmt: skip
        shared_again = [
            min((b for _, b, _, d, r in self.decisions
                 if not d and r == i and b > self.restore_at), default=float("nan"))
            for i in (0, 1)
        ]  # fmt: skip
        # A replica has found the fault once it has answered a decision by its policy.
        detected = max(first_degraded) - self.fault_at
        outage = [b - a for a, b, _, _, _ in self.decisions if a >= self.fault_at - 1.0]
        end = max(b for _, b, _, _, _ in self.decisions)
        steady = max(
            self.worst(self.decisions[0][0] + 0.5, self.fault_at - 1.0),
            self.worst(self.back_at + 1.0, end - 1.0),
        )
        return [
            self.policy.value,
            self.fault,
            steady,
            self.worst(self.fault_at - 1.0, self.back_at),
            f"{detected * 1000:.0f} ms",
            f"{(max(shared_again) - self.restore_at) * 1000:.0f} ms",
            f"{(self.back_at - self.restore_at) * 1000:.0f} ms",
            f"{max(outage) * 1000:.0f} ms",
        ]


async def run(
    server: RedisServer, policy: FailurePolicy, fault: str, before: float, outage: float,
    after: float,
) -> Run:  # fmt: skip
    settings = RedisLimiterSettings(
        policy=policy, replicas=2, prefix=f"bench:failover:{uuid.uuid4().hex}:"
    )
    replicas = [RedisLimiter.from_url(server.url, settings) for _ in range(2)]
    for limiter in replicas:
        await limiter.start()
    result = Run(policy, fault)
    clock = time.monotonic
    stop_at = clock() + before + outage + after

    async def client(index: int) -> None:
        limiter = replicas[index]
        while clock() < stop_at:
            asked = clock()
            decision = await limiter.acquire([QPS])
            result.decisions.append((asked, clock(), decision.allowed, decision.degraded, index))
            await asyncio.sleep(0.002)  # a client's think time; also lets the others run

    tasks = [asyncio.create_task(client(i % 2)) for i in range(2 * TASKS)]
    try:
        await asyncio.sleep(before)
        result.fault_at = clock()
        server.stop() if fault == "SIGKILL" else server.pause()
        await asyncio.sleep(outage)
        result.restore_at = clock()
        server.start() if fault == "SIGKILL" else server.resume()
        while not all(limiter.available for limiter in replicas):
            if clock() > stop_at + 60:
                raise RuntimeError("the replicas never went back to Redis")
            await asyncio.sleep(0.005)
        result.back_at = clock()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        for limiter in replicas:
            await limiter.aclose()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=float, default=3.0, help="steady seconds before")
    parser.add_argument("--outage", type=float, default=3.0, help="seconds Redis is away")
    parser.add_argument("--after", type=float, default=4.0, help="seconds after it returns")
    args = parser.parse_args()
    stop_servers_on_sigterm()

    server = RedisServer(require_redis_server())
    server.start()
    rows = []
    try:
        for policy in FailurePolicy:
            for fault in ("SIGKILL", "SIGSTOP"):
                result = asyncio.run(
                    run(server, policy, fault, args.before, args.outage, args.after)
                )
                rows.append(result.row())
    finally:
        server.close()
    print(header("Rate limits through Redis faults (qps = 20, 2 replicas × 16 tasks)"))
    print(
        table(
            [
                "policy",
                "fault",
                "worst 1 s window, steady",
                "worst 1 s window, outage",
                "detect",
                "recover (first shared decision)",
                "recover (both available)",
                "longest decision",
            ],
            rows,
        )
    )
    print(
        f"\nBounds (docs/architecture.md): the limit ({LIMIT}) everywhere for local-strict and "
        f"deny; {LIMIT + LIMIT // 2} in the outage's windows for local; none for allow."
    )
    print(footer())
    return 0


if __name__ == "__main__":
    sys.exit(main())
