"""Benchmark of keyplane.ratelimit: admission decisions per second and per-decision latency.

Run: ``.venv/bin/python bench/bench_limiter.py [--seconds S] [--ops N]``

Every request carries the gateway's realistic set of six limits — per key qps, qpm and tpm, per
team×model rps, rpm and tpm — and each admitted request is charged 150 tokens afterwards (the
charge is not timed). Scenarios: one hot key (far over its qps, so mostly refusals) and 10,000
keys in rotation over 100 teams (mostly admissions), on the memory backend (synchronous
``acquire_now``) and, if ``redis-server`` is installed, on a Redis the benchmark starts on a free
loopback port: one request at a time (latency) and 32 concurrent tasks (throughput). Each
scenario stops after ``--ops`` decisions or ``--seconds`` seconds, whichever comes first.

Columns: decisions per wall-clock second (the loop includes the charges of admitted requests),
decisions per CPU-second of this process (a fairer figure on a shared machine; for Redis it leaves
out the server's CPU), share admitted, and p50/p99 latency of one decision.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from keyplane.ratelimit import (
    MemoryLimiter,
    RedisLimiter,
    RedisLimiterSettings,
    RequestLimit,
    TokenLimit,
)

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
    admitted: int
    latencies_ns: list[int]

    def row(self) -> str:
        lat = sorted(self.latencies_ns)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] / 1000

        return (
            f"| {self.scenario:<34} | {self.ops:>8,} | {self.ops / self.seconds:>12,.0f} "
            f"| {self.ops / self.cpu_seconds:>12,.0f} "
            f"| {100 * self.admitted / self.ops:>6.1f} % | {pct(0.5):>8.1f} | {pct(0.99):>8.1f} |"
        )


HEADER = (
    "| scenario                           |      ops |  decisions/s |  per CPU-sec | admitted "
    "| p50 (µs) | p99 (µs) |\n"
    "|------------------------------------|---------:|-------------:|-------------:|---------:"
    "|---------:|---------:|"
)


def keys_cycle(distinct: int) -> Callable[[int], Request]:
    requests = [request_for(k) for k in range(distinct)]
    return lambda i: requests[i % distinct]


def bench_memory(scenario: str, pick: Callable[[int], Request], ops: int, seconds: float) -> Result:
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
        admitted,
        latencies,
    )


async def bench_redis(
    scenario: str,
    url: str,
    pick: Callable[[int], Request],
    ops: int,
    seconds: float,
    concurrency: int,
) -> Result:
    limiter = RedisLimiter.from_url(url, RedisLimiterSettings(prefix=f"bench:{scenario}:"))
    latencies: list[int] = []
    admitted = 0
    counter = 0
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

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        if limiter.failures:
            raise RuntimeError(f"{limiter.failures} decisions fell back: Redis was not used")
    finally:
        await limiter.aclose()
    # The charges are awaited inside the loop, so throughput counts decisions over wall time.
    return Result(
        scenario,
        len(latencies),
        time.perf_counter() - start,
        time.process_time() - cpu_start,
        admitted,
        latencies,
    )


@contextmanager
def redis_server() -> Iterator[str | None]:
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
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.kill()
            proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time cap per scenario")
    parser.add_argument("--ops", type=int, default=300_000, help="decision cap per scenario")
    args = parser.parse_args()

    hot = keys_cycle(1)
    many = keys_cycle(10_000)
    results = [
        bench_memory("memory, 1 hot key", hot, args.ops, args.seconds),
        bench_memory("memory, 10,000 keys", many, args.ops, args.seconds),
    ]
    with redis_server() as url:
        if url is None:
            print("redis-server not installed: Redis scenarios skipped", file=sys.stderr)
        else:
            results.extend(
                asyncio.run(
                    bench_redis(
                        f"redis, {name}, {concurrency} in flight",
                        url,
                        pick,
                        args.ops,
                        args.seconds,
                        concurrency,
                    )
                )
                for name, pick in (("1 hot key", hot), ("10,000 keys", many))
                for concurrency in (1, 32)
            )
    print(f"python {sys.version.split()[0]}; limits per request: qps, qpm, tpm per key + "
          "rps, rpm, tpm per team×model")  # fmt: skip
    print(HEADER)
    for result in results:
        print(result.row())
    return 0


if __name__ == "__main__":
    sys.exit(main())
