"""What the gateway costs: admission decisions in process, and the same HTTP load sent straight to
the built-in model server and through a gateway, side by side in one run — with the gateway's
rate limits in memory and in Redis (a throwaway ``redis-server`` the bench starts on a free
loopback port and stops at the end).

    .venv/bin/python bench/bench_gateway.py
    .venv/bin/python bench/bench_gateway.py --http-only --no-redis --rounds 6 \
        --also main=/tmp/main/src --also aa=src     # more gateways, each from its own src

Prints Markdown: (a) admission decisions/s in process (auth + ACL + qps/qpm/tpm limiters): the
synchronous in-memory fast path, then ``await limiter.acquire`` with a MemoryLimiter and with a
RedisLimiter, one decision at a time and from 32 concurrent tasks; (b) p50/p99 latency,
requests/s and CPU per request, direct vs through the reference pass-through (bench/_passthrough.py:
raw ASGI, one aiohttp session, a dict key lookup, no limits) vs through a gateway with in-memory
limits vs through a gateway with Redis limits, plain and streaming, in interleaved rounds, and each
gateway's CPU per request ÷ the pass-through's; (c) if py-spy is on PATH (or in .venv/bin), each
server's hottest functions during the first round of each load. Without redis-server on PATH (or
with ``--no-redis``) the Redis parts are left out. ``--also NAME=SRC`` adds a memory-limiter
gateway of the same deployment run from another source tree (``PYTHONPATH=SRC``: a ``git
archive`` of another commit, or ``src`` again as an A/A control); the order of the targets is
reversed every other round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
from _harness import (
    OPERATOR,
    PYTHON,
    Deployment,
    Proc,
    connect,
    cpu_seconds,
    footer,
    free_port,
    header,
    log,
    percentile,
    pid_of,
    table,
    wait_for,
)

CONCURRENCY = 16
#: Each target is driven ROUNDS times for SECONDS, interleaved with the others, after a warm-up.
SECONDS = 3.0
ROUNDS = 3
WARMUP = 2.0
MAX_REQUESTS = 40_000
PLAIN = {
    "model": "grok-3-mini",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 8,
}
STREAM = {**PLAIN, "stream": True}
#: Bounds of each async admission scenario (decisions, seconds), whichever comes first.
ASYNC_OPS = 200_000
ASYNC_SECONDS = 3.0
ASYNC_TASKS = (1, 32)
CLUSTER = "us-east-1"


def _admission_setup() -> tuple[Any, Any, dict[str, Any]]:
    """A gateway holding one key with huge limits, the catalog, and a request scope bearing it."""
    from keyplane.catalog import Catalog
    from keyplane.domain import keysecrets
    from keyplane.gateway.app import Gateway, GatewayConfig
    from keyplane.settings import Settings
    from tests.support.replica import one_key_replica

    secret = keysecrets.generate_secret("xai-")
    replica = one_key_replica(
        secret,
        acls=["api-key:endpoint:chat", "api-key:model:grok-3-mini"],
        qps=10**9,
        qpm=10**9,
        tpm=10**12,
    )
    gateway = Gateway(GatewayConfig(cluster=CLUSTER), replica)
    catalog = Catalog(Settings())
    scope = {"headers": [(b"authorization", f"Bearer {secret}".encode())]}
    return gateway, catalog, scope


def admission_rate(iterations: int = 200_000) -> tuple[float, float, float]:
    """Decisions per second through the gateway's own code: authenticate the bearer key,
    check state, endpoint and model ACLs, take the limits from a cache keyed by (key, revision,
    model) as the gateway does, and acquire them in memory. Returns decisions per wall-clock
    second, per CPU-second of this process (fairer on a shared machine), and CPU µs each."""
    from keyplane.gateway.admission import Limits, limits_for
    from keyplane.ratelimit import MemoryLimiter

    gateway, catalog, scope = _admission_setup()
    limiter = MemoryLimiter()
    cache: dict[tuple[str, int, str], Limits] = {}
    cpu0 = time.process_time()
    started = time.perf_counter()
    for _ in range(iterations):
        key = gateway.authenticate(scope)
        gateway.check_state(key)
        assert key.acls.allows_endpoint("chat")
        model = catalog.resolve("grok-3-mini", CLUSTER)
        assert model is not None
        assert key.acls.allows_model("grok-3-mini", model.name)
        cache_key = (key.api_key_id, key.revision, model.name)
        limits = cache.get(cache_key)
        if limits is None:
            limits = cache[cache_key] = limits_for(key, model)
        limiter.acquire_now(limits.requests, limits.tokens)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    return iterations / elapsed, iterations / cpu, cpu / iterations * 1e6


async def admission_async(make_limiter: Callable[[], Any], tasks: int) -> dict[str, Any]:
    """The same decision as :func:`admission_rate`, but ``await limiter.acquire(...)`` as the
    gateway does, from ``tasks`` concurrent tasks, for ASYNC_OPS decisions or ASYNC_SECONDS."""
    from keyplane.gateway.admission import limits_for

    gateway, catalog, scope = _admission_setup()
    limiter = make_limiter()
    latencies: list[int] = []
    admitted = 0
    issued = 0
    clock = time.perf_counter_ns

    async def worker() -> None:
        nonlocal admitted, issued
        while issued < ASYNC_OPS and time.perf_counter() < stop_at:
            issued += 1
            t0 = clock()
            key = gateway.authenticate(scope)
            gateway.check_state(key)
            assert key.acls.allows_endpoint("chat")
            model = catalog.resolve("grok-3-mini", CLUSTER)
            assert model is not None
            assert key.acls.allows_model("grok-3-mini", model.name)
            limits = limits_for(key, model)
            decision = await limiter.acquire(limits.requests, limits.tokens)
            latencies.append(clock() - t0)
            admitted += decision.allowed

    try:
        await limiter.acquire([], [])  # connect outside the timed window
        cpu0 = time.process_time()
        started = time.perf_counter()
        stop_at = started + ASYNC_SECONDS
        await asyncio.gather(*(worker() for _ in range(tasks)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        failures = int(getattr(limiter, "failures", 0))
    finally:
        await limiter.aclose()
    if failures:
        raise RuntimeError(f"{failures} decisions fell back to the failure policy: Redis unused")
    n = len(latencies)
    return {
        "n": n,
        "rate": n / elapsed,
        "cpu_us": cpu / n * 1e6,
        "p50_us": percentile(latencies, 50) / 1000,
        "p99_us": percentile(latencies, 99) / 1000,
        "admitted": admitted,
    }


def admission_table(redis_url: str | None) -> str:
    from keyplane.ratelimit import MemoryLimiter, RedisLimiter, RedisLimiterSettings

    backends: list[tuple[str, Callable[[], Any]]] = [("memory", MemoryLimiter)]
    if redis_url is not None:
        # A CPU bench, not an outage drill: a loaded machine's slow answer must not count as one.
        shared = RedisLimiterSettings(prefix="bench:adm:", timeout=5.0)
        backends.append(("Redis", lambda: RedisLimiter.from_url(redis_url, shared)))
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for name, make in backends:
        for tasks in ASYNC_TASKS:
            log(f"admission, {name}, {tasks} task(s) ...")
            results[name, tasks] = asyncio.run(admission_async(make, tasks))
    names = [name for name, _ in backends]
    columns = ["await limiter.acquire (auth + ACL + limits)", *names]
    if len(names) == 2:
        columns.append("Redis ÷ memory")
    rows = []
    for tasks in ASYNC_TASKS:
        label = "sequential (1 task)" if tasks == 1 else f"{tasks} concurrent tasks"
        for measure, key, fmt in (
            ("decisions/s", "rate", "{:,.0f}"),
            ("bench CPU µs per decision", "cpu_us", "{:.1f}"),
            ("p50 µs per decision", "p50_us", "{:.1f}"),
            ("p99 µs per decision", "p99_us", "{:.1f}"),
        ):
            values = [results[name, tasks][key] for name in names]
            row = [f"{label}: {measure}", *(fmt.format(v) for v in values)]
            if len(values) == 2:
                row.append(f"×{values[1] / values[0]:.3f}")
            rows.append(row)
    ops = ", ".join(f"{name} {tasks}: {results[name, tasks]['n']:,}" for name, tasks in results)
    return (
        table(columns, rows)
        + f"\n\nEach scenario: up to {ASYNC_OPS:,} decisions or {ASYNC_SECONDS:.0f} s (done: "
        f"{ops}). Latency with 32 tasks includes waiting for the event loop. Redis CPU is not "
        "in the bench CPU column."
    )


async def drive(
    url: str, body: dict[str, Any], headers: dict[str, str], seconds: float = SECONDS
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    budget = [MAX_REQUESTS]
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            while time.monotonic() < deadline and budget[0] > 0:
                budget[0] -= 1
                started = time.perf_counter()
                async with session.post(url, json=body) as response:
                    await response.read()
                    statuses[response.status] += 1
                latencies.append(time.perf_counter() - started)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.monotonic() - started
    return {"latencies": latencies, "statuses": statuses, "elapsed": elapsed}


def profile(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or (
        str(Path(".venv/bin/py-spy")) if Path(".venv/bin/py-spy").exists() else None
    )
    if spy is None:
        return None
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--format", "raw",
         "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def hottest(raw: Path, top: int = 12) -> list[tuple[str, str]]:
    """Self time by function from py-spy's collapsed stacks (the leaf of each stack)."""
    if not raw.exists():
        return []
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        leaves[frames[-1]] += n
        for frame in set(frames):
            if "keyplane" in frame:
                inclusive[frame] += n
    rows = [(f"{n / total:.1%}", name[:110]) for name, n in leaves.most_common(top)]
    rows += [("", "— inclusive, keyplane frames —")]
    rows += [(f"{n / total:.1%}", name[:110]) for name, n in inclusive.most_common(8)]
    return rows


class Redis:
    """The throwaway redis-server of tests.support.redis, or nothing if none is
    installed."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.server: Any = None
        self.url: str | None = None
        self.enabled = enabled

    def __enter__(self) -> Redis:
        executable = shutil.which("redis-server") if self.enabled else None
        if executable is None:
            log("redis-server not on PATH: the Redis rows are left out")
            return self
        from tests.support.redis import RedisServer

        self.server = RedisServer(executable)
        self.server.start()
        self.url = self.server.url
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.close()

    def pid(self) -> int | None:
        proc = getattr(self.server, "_proc", None)  # the fixture keeps its Popen private
        return None if proc is None else int(proc.pid)

    def count_keys(self, pattern: str) -> int:
        import redis

        assert self.url is not None
        client = redis.Redis.from_url(self.url)
        try:
            return sum(1 for _ in client.scan_iter(match=pattern, count=1000))
        finally:
            client.close()


def failures_metric(url: str) -> float:
    """keyplane_ratelimit_failures_total summed over policies, from a gateway's /metrics."""
    total = 0.0
    for line in httpx2.get(url + "/metrics", headers=OPERATOR, timeout=5.0).text.splitlines():
        if line.startswith("keyplane_ratelimit_failures_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def http_section(tmp: Path, redis: Redis, also: list[tuple[str, str]]) -> list[str]:
    out: list[str] = []
    dep = Deployment(tmp, clusters=[CLUSTER])
    try:
        dep.start_control()
        models = dep.start_models()
        memory_gw = dep.start_gateway(CLUSTER)
        gateways = [("gateway", "gateway (memory limiter)", memory_gw)]
        for index, (tag, src) in enumerate(also, start=2):
            # Another replica of the cluster, its own in-memory limits (the key's are huge).
            env = {
                "PYTHONPATH": os.path.abspath(src),
                "KEYPLANE_LIMITER__ALLOW_UNSHARED_REPLICAS": "true",
            }
            other = dep.start_gateway(CLUSTER, replica=index, env=env)
            gateways.append((tag, f"gateway {tag} ({src})", other))
        if redis.url is not None:
            # A second gateway of the same cluster, same control plane, model server and key:
            # only [limiter] differs (backend = "redis", replicas = 1, given by environment).
            redis_gw = dep.start_gateway(
                CLUSTER,
                replica=1,
                env={
                    "KEYPLANE_LIMITER__BACKEND": "redis",
                    "KEYPLANE_LIMITER__REDIS_URL": redis.url,
                    "KEYPLANE_LIMITER__REPLICAS": "1",
                },
            )
            gateways.append(("gateway-redis", "gateway (Redis limiter)", redis_gw))
        team, mgmt = dep.create_team("bench")
        with connect(dep.control_url, mgmt) as c:
            key = c.post(
                f"/auth/teams/{team}/api-keys",
                json={"name": "bench", "acls": ["api-key:endpoint:*", "api-key:model:*"],
                      "qps": 1_000_000, "qpm": 100_000_000, "tpm": "100000000000"},
            ).json()  # fmt: skip
        auth = {"Authorization": f"Bearer {key['apiKey']}"}
        for _, _, gw in gateways:
            wait_for(
                lambda gw=gw: aiohttp_get_status(gw.url + "/v1/api-key", auth) == 200,
                what=f"key on {gw.name}",
            )
        passthrough = start_passthrough(dep, models.url, key["apiKey"])
        redis_pid = redis.pid()
        rows = []
        summary: dict[tuple[str, str], dict[str, Any]] = {}
        profiles: dict[str, list[tuple[str, str]]] = {}
        for label, body in (("plain", PLAIN), ("stream", STREAM)):
            targets: list[tuple[str, str, str, dict[str, str], Proc | None]] = [
                ("direct", "direct", models.url, {}, None),
                ("passthrough", "pass-through (reference)", passthrough.url, auth, passthrough),
            ] + [(tag, name, gw.url, auth, gw) for tag, name, gw in gateways]
            for _, name, url, headers, _ in targets:
                log(f"{label}: warm-up via {name}")
                asyncio.run(drive(url + "/v1/chat/completions", body, headers, WARMUP))
            # Interleaved: every round drives each target once, so a change in the machine's
            # load during the run touches them all alike.
            acc: dict[str, dict[str, Any]] = {
                tag: {"latencies": [], "statuses": Counter(), "elapsed": 0.0, "cpu": 0.0,
                      "model": 0.0, "redis": 0.0}
                for tag, *_ in targets
            }  # fmt: skip
            for round_ in range(ROUNDS):
                for tag, name, url, headers, proc in targets[:: 1 if round_ % 2 == 0 else -1]:
                    log(f"{label} round {round_ + 1}/{ROUNDS} via {name}")
                    g0 = cpu_seconds(pid_of(proc)) if proc is not None else 0.0
                    m0 = cpu_seconds(pid_of(models))
                    r0 = cpu_seconds(redis_pid) if redis_pid is not None else 0.0
                    spy = None
                    raw = tmp / f"profile-{label}-{tag}.txt"
                    if proc is not None and round_ == 0:
                        spy = profile(pid_of(proc), int(SECONDS) - 1, raw)
                    result = asyncio.run(drive(url + "/v1/chat/completions", body, headers))
                    a = acc[tag]
                    if proc is not None:
                        a["cpu"] += cpu_seconds(pid_of(proc)) - g0
                    a["model"] += cpu_seconds(pid_of(models)) - m0
                    if redis_pid is not None:
                        a["redis"] += cpu_seconds(redis_pid) - r0
                    a["latencies"] += result["latencies"]
                    a["statuses"].update(result["statuses"])
                    a["elapsed"] += result["elapsed"]
                    if spy is not None:
                        spy.wait(timeout=30)
                        profiles[f"{name} ({label})"] = hottest(raw)
            for tag, name, _, _, proc in targets:
                a = acc[tag]
                n = len(a["latencies"])
                stats = {
                    "n": n,
                    "rate": n / a["elapsed"],
                    "p50": percentile(a["latencies"], 50) * 1000,
                    "p99": percentile(a["latencies"], 99) * 1000,
                    "gw_us": a["cpu"] / n * 1e6 if proc is not None else None,
                    "model_us": a["model"] / n * 1e6,
                    "redis_us": a["redis"] / n * 1e6 if redis_pid is not None else None,
                }
                summary[label, tag] = stats
                rows.append([
                    label,
                    name,
                    n,
                    f"{stats['rate']:,.0f}",
                    f"{stats['p50']:.2f}",
                    f"{stats['p99']:.2f}",
                    f"{stats['gw_us']:.0f}" if proc is not None else "—",
                    f"{stats['model_us']:.0f}",
                    f"{stats['redis_us']:.0f}" if tag == "gateway-redis" else "—",
                    dict(a["statuses"]),
                ])  # fmt: skip
        check = ""
        if redis.url is not None:
            fell_back = failures_metric(redis_gw.url)
            health = httpx2.get(redis_gw.url + "/healthz", timeout=5.0).json().get("limiter")
            counters = redis.count_keys(f"keyplane:rl:{CLUSTER}:*")
            check = (
                f" Redis gateway after the load: limiter {health!r}, {fell_back:.0f} decisions "
                f"by the failure policy, {counters} of its counters in Redis."
            )
            if fell_back:
                check += " **The Redis rows are not all Redis decisions.**"
        out.append("")
        out.append(f"{CONCURRENCY} concurrent connections; each path driven {ROUNDS} times "
                   f"{SECONDS:.0f} s, interleaved with the others (the order reversed every other "
                   f"round; after a {WARMUP:.0f} s warm-up each); chat completions of 8 tokens "
                   "(stream: 8 SSE chunks + usage), "
                   "load from this process. The pass-through is bench/_passthrough.py: raw ASGI, "
                   "one aiohttp session, a dict key lookup, no limits, on the gateway's uvicorn "
                   f"settings. The gateway has usage metering on.{check}\n")  # fmt: skip
        out.append(table(
            ["body", "path", "requests", "req/s", "p50 ms", "p99 ms", "gateway CPU µs/req",
             "model server CPU µs/req", "redis-server CPU µs/req", "statuses"],
            rows,
        ))  # fmt: skip
        out.append("")
        out.append(against_reference(summary, [tag for tag, _, _ in gateways]))
        if redis.url is not None:
            out.append("")
            out.append(side_by_side(summary))
        for name, profile_rows in profiles.items():
            if profile_rows:
                out.append("")
                out.append(
                    table([f"share of {name} samples", "function (self time)"], profile_rows)
                )
    finally:
        dep.stop_all()
    return out


def start_passthrough(dep: Deployment, upstream: str, secret: str) -> Proc:
    """The reference pass-through (bench/_passthrough.py), stopped with the deployment."""
    port = free_port()
    proc = Proc(
        name="passthrough",
        args=[PYTHON, str(Path(__file__).with_name("_passthrough.py")), "--port", str(port),
              "--upstream", upstream, "--key", secret],
        env=dict(dep.env),
        url=f"http://127.0.0.1:{port}",
        log_path=dep.root / "passthrough.log",
    )  # fmt: skip
    dep.procs.append(proc)
    return proc.start(ready_path="/")


def against_reference(summary: dict[tuple[str, str], dict[str, Any]], tags: list[str]) -> str:
    """Server CPU per request of each gateway ÷ the pass-through's, per body (the #11 aim)."""
    rows = []
    for label in ("plain", "stream"):
        ref = summary[label, "passthrough"]["gw_us"]
        for tag in tags:
            gw = summary[label, tag]["gw_us"]
            rows.append([label, tag, f"{ref:.0f}", f"{gw:.0f}", f"×{gw / ref:.2f}"])
    return table(
        ["body", "gateway", "pass-through CPU µs/req", "gateway CPU µs/req",
         "gateway ÷ pass-through"],
        rows,
    )  # fmt: skip


def side_by_side(summary: dict[tuple[str, str], dict[str, Any]]) -> str:
    """Per body: direct, gateway with memory limits, gateway with Redis limits, Redis ÷ memory."""
    rows = []
    for label in ("plain", "stream"):
        d, m, r = (summary[label, tag] for tag in ("direct", "gateway", "gateway-redis"))
        for measure, key, fmt in (
            ("req/s", "rate", "{:,.0f}"),
            ("p50 ms", "p50", "{:.2f}"),
            ("p99 ms", "p99", "{:.2f}"),
        ):
            rows.append([
                f"{label}: {measure}", fmt.format(d[key]), fmt.format(m[key]),
                fmt.format(r[key]), f"×{r[key] / m[key]:.2f}",
            ])  # fmt: skip
        for measure, key in (("p50", "p50"), ("p99", "p99")):
            added_m, added_r = m[key] - d[key], r[key] - d[key]
            rows.append([
                f"{label}: added {measure} ms (gateway − direct)", "—", f"{added_m:+.2f}",
                f"{added_r:+.2f}", f"×{added_r / added_m:.2f}" if added_m > 0 else "—",
            ])  # fmt: skip
        rows.append([
            f"{label}: gateway CPU µs/req", "—", f"{m['gw_us']:.0f}", f"{r['gw_us']:.0f}",
            f"×{r['gw_us'] / m['gw_us']:.2f}",
        ])  # fmt: skip
        rows.append([
            f"{label}: gateway + redis-server CPU µs/req", "—", f"{m['gw_us']:.0f}",
            f"{r['gw_us'] + r['redis_us']:.0f}",
            f"×{(r['gw_us'] + r['redis_us']) / m['gw_us']:.2f}",
        ])  # fmt: skip
    return table(
        ["same load", "direct", "gateway, memory limiter", "gateway, Redis limiter",
         "Redis ÷ memory"],
        rows,
    )  # fmt: skip


def main() -> None:
    global ROUNDS, SECONDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--http-only", action="store_true", help="no in-process admission")
    parser.add_argument("--no-redis", action="store_true", help="no Redis rows")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=SRC")
    args = parser.parse_args()
    ROUNDS, SECONDS = args.rounds, args.seconds
    also = [tuple(item.split("=", 1)) for item in args.also]
    print(header("Gateway: admission cost, and added latency and CPU per request"))
    if not args.http_only:
        rate, per_cpu, micros = admission_rate()
        print(table(["in-process admission (auth + ACL + qps/qpm/tpm)", "value"], [
            ["decisions per wall-clock second", f"{rate:,.0f}"],
            ["decisions per CPU-second (one core)", f"{per_cpu:,.0f}"],
            ["CPU µs per decision", f"{micros:.1f}"],
        ]))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, Redis(enabled=not args.no_redis) as redis:
        if not args.http_only:
            print()
            print(admission_table(redis.url))
        for line in http_section(Path(tmp), redis, [(tag, src) for tag, src in also]):
            print(line)
    print(footer())


def aiohttp_get_status(url: str, headers: dict[str, str]) -> int:
    async def get() -> int:
        async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
            return r.status

    return asyncio.run(get())


if __name__ == "__main__":
    from _harness import stop_servers_on_sigterm

    stop_servers_on_sigterm()
    sys.exit(main())
