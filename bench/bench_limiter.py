"""Benchmark of keyplane.ratelimit: CPU and latency per admission decision, memory vs Redis.

Run: ``.venv/bin/python bench/bench_limiter.py [--rounds R] [--seconds S] [--ops N]``

Every request carries the gateway's realistic set of six limits — per key qps, qpm and tpm, per
team×model rps, rpm and tpm — and each admitted request is charged 150 tokens afterwards (the
charge is not timed, but its CPU is counted: it is part of what a request costs). Workloads: one
hot key (far over its qps, so mostly refusals) and 10,000 keys in rotation over 100 teams (mostly
admissions). Backends: memory through its synchronous ``acquire_now`` (what the gateway calls),
memory through ``await acquire``, and — if ``redis-server`` is installed — a ``RedisLimiter`` on a
Redis the benchmark starts on a free loopback port; the async ones with 1 request at a time,
with 32 in flight (a closed loop: each of 32 tasks asks again as soon as it is answered) and 32
at once (waves: 32 decisions made together, each timed from that moment, then their charges, then
the next wave). Every scenario runs once per round, the rounds interleaved (so that a shared
machine's load falls on all of them alike), each for ``--ops`` decisions or ``--seconds``
seconds, whichever comes first; the tables give the median over the rounds.

Columns: decisions per wall-clock second, CPU µs per decision of this process (user + system:
the client's share of the socket work included) and of redis-server, share admitted, and p50/p99
latency of one decision. For the Redis limiter on its own client a second table gives its
script calls: the calls per batch and the round trip of a batch (sent → answer on the event loop),
beside in flight ÷ decisions/s — in the closed loop a task's mean cycle (its decision and its
charge) by Little's law, whatever the client does — the decision p99, and the Redis commands
the scripts ran per decision (``INFO commandstats``, reset at each scenario's start). The last table
divides the Redis limiter's CPU per decision by the memory limiter's (``await acquire``, same
workload, same concurrency), within the run; the ``redis-py`` rows are the same limiter on
redis-py's client (what ``from_url`` gives a ``rediss://`` URL, and gave every URL before
``keyplane.ratelimit.resp``): the client's share.

The Redis limiter runs with a 5 s timeout here (default 0.25 s): on a loaded machine a slow
answer would otherwise count as an outage, and the failure policy would decide instead of Redis
(the bench fails if any decision did).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from keyplane.ratelimit import (
    MemoryLimiter,
    RedisLimiter,
    RedisLimiterSettings,
    RequestLimit,
    TokenLimit,
)
from keyplane.ratelimit.redis import _redis_py
from keyplane.ratelimit.resp import RespClient

TOKENS_PER_REQUEST = 150
TEAMS = 100


@dataclass
class Request:
    limits: list[RequestLimit]
    tokens: list[TokenLimit]


def request_for(key: int) -> Request:
    team = key % TEAMS
    return Request(
        limits=[
            RequestLimit("qps", f"key:{key}:qps", 100, 1.0),
            RequestLimit("qpm", f"key:{key}:qpm", 3_000, 60.0),  # > 1000: bucketed
            RequestLimit("rps", f"team:{team}:model:llama:rps", 1_000, 1.0),
            RequestLimit("rpm", f"team:{team}:model:llama:rpm", 30_000, 60.0),  # bucketed
        ],
        tokens=[
            TokenLimit("tpm", f"key:{key}:tpm", 1_000_000),
            TokenLimit("tpm", f"team:{team}:model:llama:tpm", 10_000_000),
        ],
    )


@dataclass
class Result:
    scenario: str
    ops: int
    seconds: float
    cpu_seconds: float  # this process only: on a shared machine, wall time also counts others
    server_cpu_seconds: float | None  # redis-server, for the Redis scenarios
    admitted: int
    latencies_ns: list[int]
    batches: list[tuple[int, int]] = field(default_factory=list)  # (round trip ns, calls)
    commands: int = 0  # what the scripts ran inside redis-server (INFO commandstats)

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.ops * 1e6

    def pct(self, p: float) -> float:
        return pct(self.latencies_ns, p) / 1000


def pct(values: list[int], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


@dataclass
class Scenario:
    name: str
    run: Callable[[], Result]
    results: list[Result] = field(default_factory=list)

    def median(self, value: Callable[[Result], float]) -> float:
        return statistics.median(value(r) for r in self.results)

    def row(self) -> str:
        server = (
            f"{self.median(lambda r: (r.server_cpu_seconds or 0) / r.ops * 1e6):>10.1f}"
            if self.results[0].server_cpu_seconds is not None
            else f"{'—':>10}"
        )
        return (
            f"| {self.name:<34} | {sum(r.ops for r in self.results):>9,} "
            f"| {self.median(lambda r: r.ops / r.seconds):>12,.0f} "
            f"| {self.median(lambda r: r.cpu_us):>10.1f} | {server} "
            f"| {self.median(lambda r: 100 * r.admitted / r.ops):>6.1f} % "
            f"| {self.median(lambda r: r.pct(0.5)):>8.1f} "
            f"| {self.median(lambda r: r.pct(0.99)):>8.1f} |"
        )


HEADER = (
    "| scenario (median of the rounds)    | ops, all  |  decisions/s | CPU µs/dec | Redis CPU  "
    "| admitted | p50 (µs) | p99 (µs) |\n"
    "|------------------------------------|----------:|-------------:|-----------:|-----------:"
    "|---------:|---------:|---------:|"
)


def keys_cycle(distinct: int) -> Callable[[int], Request]:
    requests = [request_for(k) for k in range(distinct)]
    return lambda i: requests[i % distinct]


def bench_memory(scenario: str, pick: Callable[[int], Request], ops: int, seconds: float) -> Result:
    """The synchronous fast path the gateway calls: ``acquire_now``, then ``charge_now``."""
    limiter = MemoryLimiter()
    latencies: list[int] = []
    admitted = 0
    clock = time.perf_counter_ns
    start = time.perf_counter()
    cpu_start = time.process_time()
    stop_at = start + seconds
    i = 0
    while i < ops:
        req = pick(i)
        t0 = clock()
        decision = limiter.acquire_now(req.limits, req.tokens)
        latencies.append(clock() - t0)
        if decision.allowed:
            admitted += 1
            limiter.charge_now(req.tokens, TOKENS_PER_REQUEST)
        i += 1
        if i % 1024 == 0 and time.perf_counter() > stop_at:
            break
    return Result(
        scenario,
        i,
        time.perf_counter() - start,
        time.process_time() - cpu_start,
        None,
        admitted,
        latencies,
    )


async def bench_async(
    scenario: str,
    make: Callable[[], Any],
    pick: Callable[[int], Request],
    ops: int,
    seconds: float,
    concurrency: int,
    server_pid: int | None,
    waves: bool = False,
    server_url: str | None = None,
) -> Result:
    """``await acquire``, then ``await charge`` when admitted, from ``concurrency`` tasks; with
    ``waves``, ``concurrency`` decisions made at once, each timed from that moment, their charges
    awaited together, then the next wave."""
    limiter = make()
    await limiter.acquire(pick(0).limits[:1])  # connect and load the script outside the timing
    batches = round_trips(limiter)
    stats = redis.Redis.from_url(server_url) if server_url else None
    if stats is not None:
        stats.config_resetstat()
    latencies: list[int] = []
    admitted = 0
    counter = 0
    server_start = cpu_seconds(server_pid) if server_pid else 0.0
    start = time.perf_counter()
    cpu_start = time.process_time()
    stop_at = start + seconds

    async def worker() -> None:
        nonlocal admitted, counter
        while counter < ops and time.perf_counter() < stop_at:
            req = pick(counter)
            counter += 1
            t0 = time.perf_counter_ns()
            decision = await limiter.acquire(req.limits, req.tokens)
            latencies.append(time.perf_counter_ns() - t0)
            if decision.allowed:
                admitted += 1
                await limiter.charge(req.tokens, TOKENS_PER_REQUEST)

    async def timed(req: Request, t0: int) -> Any:
        decision = await limiter.acquire(req.limits, req.tokens)
        latencies.append(time.perf_counter_ns() - t0)
        return decision

    async def wave() -> None:
        nonlocal admitted, counter
        while counter < ops and time.perf_counter() < stop_at:
            reqs = [pick(counter + i) for i in range(concurrency)]
            counter += concurrency
            t0 = time.perf_counter_ns()
            decisions = await asyncio.gather(*(timed(req, t0) for req in reqs))
            charged = [req for req, d in zip(reqs, decisions, strict=True) if d.allowed]
            admitted += len(charged)
            await asyncio.gather(*(limiter.charge(r.tokens, TOKENS_PER_REQUEST) for r in charged))

    try:
        if waves:
            await wave()
        else:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu = time.process_time() - cpu_start
        elapsed = time.perf_counter() - start
        server_cpu = cpu_seconds(server_pid) - server_start if server_pid else None
        commands = script_commands(stats) if stats is not None else 0
        failures = int(getattr(limiter, "failures", 0))
        if failures:
            raise RuntimeError(f"{failures} decisions fell back: Redis was not used")
    finally:
        await limiter.aclose()
        if stats is not None:
            stats.close()
    # The charges are awaited inside the loop, so throughput counts decisions over wall time.
    return Result(
        scenario, len(latencies), elapsed, cpu, server_cpu, admitted, latencies, batches, commands
    )


def script_commands(stats: redis.Redis) -> int:
    """The commands redis-server ran since its stats were reset, but the calls of the scripts
    themselves and the bench's own: what the Lua of the limiter's calls did inside Redis."""
    own = ("cmdstat_eval", "cmdstat_script", "cmdstat_config", "cmdstat_info")
    counts = stats.info("commandstats")
    return sum(int(v["calls"]) for k, v in counts.items() if not k.startswith(own))


def round_trips(limiter: Any) -> list[tuple[int, int]]:
    """Each script call of the limiter's own client from now on, as (ns from its sending to its
    answer reaching the event loop, calls it carried): what one decision cannot wait less
    than, beside what it waits for in this process (its batch's turn, the other tasks)."""
    client = getattr(limiter, "_client", None)
    found: list[tuple[int, int]] = []
    if not isinstance(client, RespClient):
        return found
    send = client.evalsha

    def timed(script: Any, keys: Any, args: Any, timeout: float) -> asyncio.Future[Any]:
        t0 = time.perf_counter_ns()
        future = send(script, keys, args, timeout)
        future.add_done_callback(lambda _: found.append((time.perf_counter_ns() - t0, len(args))))
        return future

    client.evalsha = timed  # type: ignore[method-assign]
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def redis_server() -> Iterator[tuple[str, int] | None]:
    """A throwaway redis-server on a free loopback port; ``None`` if none is installed."""
    executable = shutil.which("redis-server")
    if executable is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with tempfile.TemporaryDirectory(prefix="keyplane-bench-redis-") as workdir:
        proc = subprocess.Popen(
            [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(Path(workdir))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                        s.sendall(b"PING\r\n")
                        if s.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.01)
            yield f"redis://127.0.0.1:{port}/0", proc.pid
        finally:
            proc.kill()
            proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--seconds", type=float, default=2.0, help="time cap per scenario")
    parser.add_argument("--ops", type=int, default=100_000, help="decision cap per scenario")
    args = parser.parse_args()

    workloads = (("1 hot key", keys_cycle(1)), ("10,000 keys", keys_cycle(10_000)))
    with redis_server() as server:
        if server is None:
            print("redis-server not installed: Redis scenarios skipped", file=sys.stderr)
        scenarios: list[Scenario] = []
        for name, pick in workloads:
            label = f"memory sync, {name}"
            scenarios.append(
                Scenario(
                    label, lambda lb=label, p=pick: bench_memory(lb, p, args.ops, args.seconds)
                )
            )
        backends: list[tuple[str, Callable[[], Any], int | None]] = [
            ("memory", MemoryLimiter, None)
        ]
        if server is not None:
            url, pid = server
            prefixes = iter(range(1_000_000))

            def redis_limiter() -> RedisLimiter:
                settings = RedisLimiterSettings(prefix=f"bench:{next(prefixes)}:", timeout=5.0)
                return RedisLimiter.from_url(url, settings)

            def redis_py_limiter() -> RedisLimiter:
                settings = RedisLimiterSettings(prefix=f"bench:{next(prefixes)}:", timeout=5.0)
                return RedisLimiter(_redis_py(url, settings), settings, owns_client=True)

            backends.append(("redis", redis_limiter, pid))
            backends.append(("redis-py", redis_py_limiter, pid))
        stats_url = server[0] if server is not None else None
        for concurrency, waves in ((1, False), (32, False), (32, True)):
            for name, pick in workloads:
                for backend, make, server_pid in backends:
                    if waves and backend == "redis-py":
                        continue
                    how = "at once" if waves else "in flight"
                    label = f"{backend}, {name}, {concurrency} {how}"
                    run = functools.partial(
                        bench_async, label, make, pick, args.ops, args.seconds, concurrency,
                        server_pid, waves, stats_url if server_pid else None,
                    )  # fmt: skip
                    scenarios.append(Scenario(label, lambda r=run: asyncio.run(r())))
        for round_ in range(args.rounds):
            for scenario in scenarios:
                print(f"round {round_ + 1}/{args.rounds}: {scenario.name}", file=sys.stderr)
                scenario.results.append(scenario.run())
    load = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · nproc {os.cpu_count()} · "
          f"python {sys.version.split()[0]} · load avg at end {load[0]:.2f} / {load[1]:.2f} / "
          f"{load[2]:.2f} · {args.rounds} interleaved rounds, each scenario up to "
          f"{args.ops:,} decisions or {args.seconds:g} s")  # fmt: skip
    print("limits per request: qps, qpm, tpm per key + rps, rpm, tpm per team×model\n")
    print(HEADER)
    for scenario in scenarios:
        print(scenario.row())
    by_name = {s.name: s for s in scenarios}
    ratios = []
    for concurrency in (1, 32):
        for name, _ in workloads:
            memory = by_name[f"memory, {name}, {concurrency} in flight"]
            redis = by_name.get(f"redis, {name}, {concurrency} in flight")
            redis_py = by_name.get(f"redis-py, {name}, {concurrency} in flight")
            if redis is None or redis_py is None:
                continue
            mem_cpu = memory.median(lambda r: r.cpu_us)
            redis_cpu = redis.median(lambda r: r.cpu_us)
            py_cpu = redis_py.median(lambda r: r.cpu_us)
            ratios.append(
                f"| {name}, {concurrency} in flight | {mem_cpu:.1f} | {redis_cpu:.1f} "
                f"| ×{redis_cpu / mem_cpu:.1f} | {py_cpu:.1f} | ×{py_cpu / mem_cpu:.1f} |"
            )
    trips = [s for s in scenarios if s.results[0].batches]
    if trips:
        print(
            "\n| own client's script calls (median of the rounds) | calls/batch "
            "| round trip p50 (µs) | round trip p99 (µs) "
            "| a task's cycle: in flight ÷ decisions/s (µs) "
            "| decision p99 (µs) | Redis commands/decision |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for s in trips:
            in_flight = 32 if "32 in flight" in s.name else 1
            little = 1e6 * in_flight / s.median(lambda r: r.ops / r.seconds)
            print(
                f"| {s.name} "
                f"| {s.median(lambda r: statistics.mean(n for _, n in r.batches)):.1f} "
                f"| {s.median(lambda r: pct([t for t, _ in r.batches], 0.5) / 1000):,.0f} "
                f"| {s.median(lambda r: pct([t for t, _ in r.batches], 0.99) / 1000):,.0f} "
                + (f"| {little:,.0f} " if "at once" not in s.name else "| — ")
                + f"| {s.median(lambda r: r.pct(0.99)):,.0f} "
                f"| {s.median(lambda r: r.commands / r.ops):.1f} |"
            )
    if ratios:
        print(
            "\n| workload | memory CPU µs/decision | Redis CPU µs/decision | Redis ÷ memory "
            "| Redis (redis-py client) CPU µs/decision | redis-py ÷ memory |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        print("\n".join(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
