"""Usage metering, ingest and query: what they cost.

1. Gateway CPU per request with metering on vs off: two gateways of one cluster, the same key,
   model server and load, one with ``usage.metering = false``; alternating rounds.
   Plus the hot path's own cost: ``Meter.finish`` (encode + one ``os.write``) in a tight loop.
2. Ingest: records/s through ``POST /internal/v1/usage`` on a real control plane (SQLite and
   PostgreSQL), in batches as a gateway ships them.
3. The usage RPC: p50/p99 over 30 days of one team with 1,000 keys (hourly and daily rollups
   loaded directly), for the query shapes a console asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
from _harness import (
    Deployment,
    connect,
    cpu_seconds,
    footer,
    header,
    percentile,
    pid_of,
    table,
    tree_cpu_seconds,
    wait_for,
)

CLUSTER = "us-east-1"
CONCURRENCY = 16
ROUND_REQUESTS = 1200
WARMUP_REQUESTS = 300
ROUNDS = int(os.environ.get("BENCH_METERING_ROUNDS", "10"))
#: No round of the gateway section starts past this many seconds (3 rounds at least).
METERING_SECONDS = float(os.environ.get("BENCH_METERING_SECONDS", "420"))
#: A round's requests per gateway are driven in this many slices, the gateways taking turns
#: slice by slice: a change in the machine's load during a round falls on all of them alike.
SLICES = 4
INPROCESS_ROUNDS = int(os.environ.get("BENCH_INPROCESS_ROUNDS", "30"))
#: Another checkout's ``src`` (e.g. ``git archive <commit> src``): ``gateway`` adds a fourth
#: gateway, metering on, running that code.
BASELINE = os.environ.get("BENCH_METERING_BASELINE", "")
INPROCESS_REQUESTS = int(os.environ.get("BENCH_INPROCESS_REQUESTS", "2000"))
#: Set by the ``instructions`` section for the ``inprocess`` run it starts under callgrind: each
#: timed batch of requests lies between two ``getppid`` calls, where callgrind dumps its counts.
INPROCESS_MARK = os.environ.get("BENCH_INPROCESS_MARK") == "1"
#: The ``process`` section: the rates (requests a second) each gateway is served at under
#: callgrind, and the seconds of each window (an idle one first).
PROCESS_RATES = [float(r) for r in os.environ.get("BENCH_PROCESS_RATES", "20,40").split(",")]
PROCESS_SECONDS = float(os.environ.get("BENCH_PROCESS_SECONDS", "20"))
INPROCESS_VARIANTS = [
    "off",
    "on",
    "on, a write() per record",
    "on, no write",
    "on, no record",
    "off, again",
]
BODY = {
    "model": "grok-3-mini",
    "messages": [{"role": "user", "content": "Say hello"}],
    "max_tokens": 4,
}
INGEST_RECORDS = int(os.environ.get("BENCH_INGEST_RECORDS", "200000"))
INGEST_BATCH = 5_000
QUERY_RUNS = 40
KEYS = 1000
DAYS = 30


def log(text: str) -> None:
    print(f"[bench_usage] {text}", file=sys.stderr, flush=True)


# -- 1. gateway CPU -------------------------------------------------------------------------------


async def _drive(url: str, headers: dict[str, str], n: int) -> dict[int, int]:
    statuses: dict[int, int] = {}
    left = [n]
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONCURRENCY), headers=headers
    ) as session:

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                async with session.post(url, json=BODY) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return statuses


def run_ns(pid: int) -> int:
    """CPU time of all of a process's threads in ns (``/proc/<pid>/task/*/schedstat``): a round
    of 1,200 requests is ~0.3 s of CPU, which ``/proc/<pid>/stat``'s 10 ms ticks would cut to
    within ±3 %. A thread that ended during the round takes its time with it (a gateway's threads
    live as long as it does)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def system_seconds(pid: int) -> float:
    """System CPU time of a process so far (``/proc/<pid>/stat``, in 10 ms ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def voluntary_switches(pid: int) -> int:
    """Voluntary context switches of all of a process's threads: how often it blocked."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


@contextlib.contextmanager
def count_syscalls(pid: int) -> Iterator[list[int]]:
    """The process's system calls while the block runs (``perf stat``; an empty list without
    perf or its permission)."""
    counted: list[int] = []
    if shutil.which("perf") is None:
        yield counted
        return
    perf = subprocess.Popen(
        ["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", str(pid)],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)  # attached
    try:
        yield counted
    finally:
        perf.send_signal(signal.SIGINT)
        _, err = perf.communicate(timeout=30)
        for line in err.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2].startswith("raw_syscalls") and fields[0].isdigit():
                counted.append(int(fields[0]))


@contextlib.contextmanager
def _nothing() -> Iterator[list[int]]:
    yield []


def meter_micro() -> float:
    """CPU µs per ``Meter.finish`` on a real spool file."""
    from keyplane.catalog import Catalog
    from keyplane.settings import Settings
    from keyplane.usage.meter import Meter, Tally
    from keyplane.usage.spool import Spool

    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp))
        meter = Meter(spool, Catalog(Settings()).models)
        tally = Tally("chat")
        tally.team_id, tally.api_key_id, tally.model = (
            str(uuid.uuid4()),
            str(uuid.uuid4()),
            "grok-4",
        )
        tally.prompt_tokens, tally.completion_tokens = 120, 480
        n = 100_000
        started = time.process_time()  # CPU, not wall time: the machine is shared
        for _ in range(n):
            tally.finished = False
            meter.finish(tally)
        elapsed = time.process_time() - started
        spool.close()
    return elapsed / n * 1e6


def _start_with_key(dep: Deployment) -> tuple[Any, dict[str, str]]:
    """The control plane and the model server started, and a key that may call every model: the
    model server's process and the key's ``Authorization`` header."""
    dep.start_control()
    models = dep.start_models()
    team, mgmt = dep.create_team("bench")
    with connect(dep.control_url, mgmt) as c:
        key = c.post(
            f"/auth/teams/{team}/api-keys",
            json={"name": "bench", "acls": ["api-key:endpoint:*", "api-key:model:*"]},
        ).json()
    return models, {"Authorization": f"Bearer {key['apiKey']}"}


def gateway_section(tmp: Path) -> str:
    """Three gateways of one cluster: metering on, off, and on again (an A/A control: how far two
    identical gateways differ on this machine is the floor under any on/off difference)."""
    dep = Deployment(tmp / "gw", clusters=[CLUSTER])
    # The same hash seed in every gateway: dict and set layouts alike in all of them.
    common = {"KEYPLANE_LIMITER__ALLOW_UNSHARED_REPLICAS": "true", "PYTHONHASHSEED": "0"}
    envs = {
        "on": common,
        "off": {"KEYPLANE_USAGE__METERING": "false", **common},
        "on, again": common,
    }
    if BASELINE:  # metering on, with another checkout's code: before and after in one run
        envs["on, baseline"] = {"PYTHONPATH": BASELINE, **common}
    labels = list(envs)
    try:
        models, auth = _start_with_key(dep)
        url = "/v1/chat/completions"

        def fresh(order: list[str]) -> dict[str, Any]:
            """The three gateways started anew (in ``order``), each warmed up: a process's own
            layout (memory, caches) differs from another's by several %, the same in every round
            it serves, so each round gets new ones and the ratio's median is over those."""
            started: dict[str, Any] = {}
            for label in order:
                gw = dep.start_gateway(CLUSTER, replica=labels.index(label), env=envs[label])

                def known(url: str = gw.url) -> bool:
                    return httpx2.get(url + "/v1/api-key", headers=auth).status_code == 200

                wait_for(known, what=f"key on {gw.name}")
                asyncio.run(_drive(gw.url + url, auth, WARMUP_REQUESTS))
                started[label] = gw
            return started

        per_request: dict[str, list[float]] = {label: [] for label in labels}
        # What the load does not change: system calls and blocking waits per request.
        syscalls: dict[str, list[float]] = {label: [] for label in labels}
        waits: dict[str, list[float]] = {label: [] for label in labels}
        # System CPU over every round (10 ms ticks: summed, not per round).
        system = dict.fromkeys(labels, 0.0)
        statuses: dict[str, dict[int, int]] = {label: {} for label in labels}
        deadline = time.monotonic() + METERING_SECONDS
        slice_requests = ROUND_REQUESTS // SLICES
        for round_ in range(ROUNDS):
            if round_ >= 3 and time.monotonic() > deadline:
                log(f"metering: {round_} rounds in {METERING_SECONDS:.0f} s, stopping there")
                break
            # Each round in another order: no gateway always starts or runs first or last.
            order = labels[round_ % len(labels) :] + labels[: round_ % len(labels)]
            gateways = fresh(order)
            cpu = dict.fromkeys(labels, 0.0)
            waited = dict.fromkeys(labels, 0)
            for slice_ in range(SLICES):
                # The turns rotate slice by slice too (system calls counted in the first only).
                turn = order[slice_ % len(order) :] + order[: slice_ % len(order)]
                for label in turn:
                    pid = pid_of(gateways[label])
                    with count_syscalls(pid) if slice_ == 0 else _nothing() as counted:
                        c0, w0, s0 = run_ns(pid), voluntary_switches(pid), system_seconds(pid)
                        got = asyncio.run(_drive(gateways[label].url + url, auth, slice_requests))
                        cpu[label] += (run_ns(pid) - c0) / 1e9
                        system[label] += system_seconds(pid) - s0
                        waited[label] += voluntary_switches(pid) - w0
                    if counted:
                        syscalls[label].append(counted[0] / slice_requests)
                    for status, count in got.items():
                        statuses[label][status] = statuses[label].get(status, 0) + count
            for label in labels:
                per_request[label].append(cpu[label] / (slice_requests * SLICES) * 1e6)
                waits[label].append(waited[label] / (slice_requests * SLICES))
            for gw in gateways.values():
                gw.stop()
        log(f"metering rounds: {per_request}")
        med = {label: statistics.median(v) for label, v in per_request.items()}
        done = len(per_request["off"])
        requests_done = done * slice_requests * SLICES

        def ratios(a: str, b: str) -> str:
            """The median of the per-round ratios a / b, and their middle half (first to third
            quartile): how far one round's verdict can be trusted."""
            values = sorted(x / y for x, y in zip(per_request[a], per_request[b], strict=True))
            low, high = values[len(values) // 4], values[(3 * len(values)) // 4]
            return f"{statistics.median(values):.3f} (middle half {low:.3f}–{high:.3f})"

        ratio = ratios("on", "off")
        ratio_again = ratios("on, again", "off")
        control = ratios("on", "on, again")
        baseline = [(f"{label} / off", ratios(label, "off")) for label in labels[3:]]
        micro = meter_micro()
        _ = models
    finally:
        dep.stop_all()

    def per(label: str) -> str:
        calls = f"{statistics.median(syscalls[label]):.2f}" if syscalls[label] else "—"
        return f"{calls} / {statistics.median(waits[label]):.3f}"

    def rounds(label: str) -> str:
        values = per_request[label]
        return f"{med[label]:.0f} (rounds {min(values):.0f}–{max(values):.0f})"

    rows = [
        ("gateway CPU µs/request, metering off (median of rounds)", rounds("off")),
        ("gateway CPU µs/request, metering on (median of rounds)", rounds("on")),
        ("gateway CPU µs/request, metering on, a second gateway", rounds("on, again")),
        ("on / off (median of per-round ratios; aim ≤ 1.05)", ratio),
        ("on, again / off", ratio_again),
        ("on / on, again (A/A control: the machine's floor)", control),
        *((f"gateway CPU µs/request, {label}", rounds(label)) for label in labels[3:]),
        *baseline,
        ("`Meter.finish` alone (encode + copy into the spool's map), CPU µs", f"{micro:.2f}"),
        *(
            (f"system calls / voluntary context switches per request, {label}", per(label))
            for label in labels
        ),
        *(
            (
                f"system CPU µs/request (all rounds), {label}",
                f"{system[label] / requests_done * 1e6:.1f}",
            )
            for label in labels
        ),
        ("statuses", "; ".join(f"{k}: {v}" for k, v in statuses.items())),
    ]
    return (
        f"\n**Gateway CPU with metering on vs off** ({done} rounds, each with {len(labels)} "
        f"fresh gateways warmed up by {WARMUP_REQUESTS} requests, then {ROUND_REQUESTS} chat "
        f"requests, {CONCURRENCY} concurrent, per gateway in {SLICES} slices, the gateways taking "
        "turns slice by slice in a rotating order; CPU of the gateway's threads from "
        "/proc/<pid>/task/*/schedstat, in ns; load average "
        f"{os.getloadavg()[0]:.1f} at the end)\n\n" + table(["measure", "value"], rows)
    )


class _Answer:
    """A model server's whole answer, the same every time (for the in-process bench)."""

    status = 200
    is_stream = False
    _body = (
        b'{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":'
        b'"assistant","content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,'
        b'"completion_tokens":1,"total_tokens":5}}'
    )

    def header_items(self) -> Iterable[tuple[str, str]]:
        return [("content-type", "application/json")]

    async def read(self) -> bytes:
        return self._body


class _Upstream:
    """An ``Upstream`` answering every post at once, no socket: what is left is the gateway."""

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    @asynccontextmanager
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> AsyncIterator[Any]:
        yield _Answer()


def inprocess_section(tmp: Path) -> str:
    """Metering's part of a request in process (the gateway's ASGI app, a real spool, an upstream
    with no socket): on, off, and on with parts of it taken out, in short interleaved rounds; CPU
    per request by ``time.process_time``. What the end-to-end run cannot resolve on a loaded
    machine (its A/A control spreads ~10 % of ~230 µs), this resolves to ~1–2 µs."""
    from keyplane.catalog import Catalog
    from keyplane.domain import keysecrets
    from keyplane.gateway import Gateway, GatewayConfig, Inference
    from keyplane.ratelimit import MemoryLimiter
    from keyplane.settings import Settings
    from keyplane.usage.meter import Meter, Tally
    from keyplane.usage.record import HEADER_SIZE, header_into
    from keyplane.usage.spool import Spool
    from tests.support.replica import one_key_replica

    secret = keysecrets.generate_secret("xai-")
    body = json.dumps(BODY).encode()
    headers = [
        (b"host", b"gateway"),
        (b"authorization", f"Bearer {secret}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]

    async def build(variant: str) -> Gateway:
        replica = one_key_replica(secret)
        gateway = Gateway(GatewayConfig(cluster=CLUSTER), replica)
        catalog = Catalog(Settings())
        await Inference(gateway, catalog, MemoryLimiter(), upstream=_Upstream()).start()
        if not variant.startswith("off"):
            meter = gateway.meter = Meter(Spool(tmp / "inprocess" / variant), catalog.models)
            if variant == "on, no write":
                meter.spool.append_payload = lambda payload: None  # type: ignore[method-assign]
            elif variant == "on, a write() per record":
                # The spool before the memory map: the frame built, then one ``os.write``.
                path = tmp / f"write-{len(variant)}-{id(meter)}.spool"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                frame = bytearray(HEADER_SIZE)

                def write(payload: bytearray) -> None:
                    frame[HEADER_SIZE:] = payload
                    header_into(frame, 0, payload)
                    os.write(fd, frame)

                meter.spool.append_payload = write  # type: ignore[method-assign]
            elif variant == "on, no record":

                def finish(tally: Tally) -> None:
                    tally.finished = True

                meter.finish = finish  # type: ignore[method-assign]
        return gateway

    async def serve(gateway: Gateway, n: int) -> float:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Any) -> None:
            pass

        started = time.process_time()
        for _ in range(n):
            scope = {
                "type": "http",
                "method": "POST",
                "path": "/v1/chat/completions",
                "headers": headers,
                "query_string": b"",
                "client": ("127.0.0.1", 1),
                "server": ("127.0.0.1", 2),
                "scheme": "http",
                "http_version": "1.1",
                "root_path": "",
            }
            await gateway(scope, receive, send)
        return (time.process_time() - started) / n * 1e6

    variants = INPROCESS_VARIANTS
    rounds = INPROCESS_ROUNDS
    per: dict[str, list[float]] = {v: [] for v in variants}
    calls: dict[str, float] = {}

    async def run() -> None:
        gateways = {v: await build(v) for v in variants}
        for gateway in gateways.values():
            await serve(gateway, 2_000)  # warm
        gc.collect()
        gc.freeze()
        for round_ in range(rounds):
            shift = round_ % len(variants)
            for v in variants[shift:] + variants[:shift]:
                if INPROCESS_MARK:
                    os.getppid()  # callgrind dumps here: what came before is not this batch's
                per[v].append(await serve(gateways[v], INPROCESS_REQUESTS))
                if INPROCESS_MARK:
                    os.getppid()  # and here: this batch's instructions alone
        for v, gateway in gateways.items():
            # Function calls per request (Python's and builtins'), the figure the load does not
            # move: counted by cProfile over a few requests, apart from the timed rounds.
            profile = cProfile.Profile()
            profile.enable()
            await serve(gateway, 200)
            profile.disable()
            calls[v] = pstats.Stats(profile).total_calls / 200  # type: ignore[attr-defined]
            if gateway.meter is not None:
                gateway.meter.spool.close()

    asyncio.run(run())
    base = per["off"]

    def quartile(values: list[float]) -> float:
        return sorted(values)[len(values) // 4]

    rows = [
        (
            v,
            f"{statistics.median(per[v]):.1f}",
            f"{quartile(per[v]):.1f}",
            f"{statistics.median(a - b for a, b in zip(per[v], base, strict=True)):+.1f}",
            f"{calls[v]:.0f}",
        )
        for v in variants
    ]
    return (
        f"\n**Metering in process** ({rounds} interleaved rounds of {INPROCESS_REQUESTS} chat "
        "requests per variant through the gateway's ASGI app, an upstream with no socket, a real "
        "spool; CPU µs per request by time.process_time; load average "
        f"{os.getloadavg()[0]:.1f})\n\n"
        + table(
            [
                "variant",
                "median µs",
                "first quartile µs",
                "− off, median of rounds µs",
                "function calls per request",
            ],
            rows,
        )
    )


def instructions_section(tmp: Path) -> str:
    """Metering's part of a request in machine instructions, which the load does not move (the
    CPU-time figures above spread by ±10 % on a busy machine): one round of ``inprocess`` run
    under callgrind, its counts dumped around each variant's batch of requests."""
    if shutil.which("valgrind") is None:
        return "\n(no valgrind here: no instruction counts)\n"
    out = tmp / "callgrind.out"
    requests = 1000
    env = {
        **os.environ,
        "BENCH_INPROCESS_MARK": "1",
        "BENCH_INPROCESS_ROUNDS": "1",
        "BENCH_INPROCESS_REQUESTS": str(requests),
    }
    command = ["valgrind", "--tool=callgrind", "--dump-before=getppid"]
    command += [f"--callgrind-out-file={out}", sys.executable, str(Path(__file__).resolve())]
    subprocess.run([*command, "inprocess"], env=env, check=True, capture_output=True, timeout=3600)

    def instructions(dump: int) -> float:
        """Instructions per request in dump ``dump`` (the first is everything before the first
        batch; then each batch and the gap after it, in turn)."""
        for line in Path(f"{out}.{dump}").read_text().splitlines():
            if line.startswith("summary:"):
                return int(line.split()[1]) / requests
        raise ValueError(f"no summary in callgrind dump {dump}")

    counts = {v: instructions(2 + 2 * i) for i, v in enumerate(INPROCESS_VARIANTS)}
    off = counts["off"]
    rows = [
        (v, f"{n:,.0f}", f"{n - off:+,.0f}", f"{(n - off) / off * 100:+.1f} %")
        for v, n in counts.items()
    ]
    return (
        f"\n**Metering in process, in instructions** (callgrind, {requests} chat requests per "
        "variant through the gateway's ASGI app as in the section above; instructions of the "
        "whole process per request, which the machine's load does not change)\n\n"
        + table(["variant", "instructions per request", "− off", "− off, % of off"], rows)
    )


async def _paced(url: str, headers: dict[str, str], rate: float, seconds: float) -> int:
    """``rate`` requests a second for ``seconds`` (each started on time, whatever the answers
    before it are doing), then waits for the last answer; the requests answered 200."""
    answered = 0
    async with aiohttp.ClientSession(headers=headers) as session:

        async def one() -> None:
            nonlocal answered
            async with session.post(url, json=BODY) as response:
                await response.read()
                answered += response.status == 200

        started = time.monotonic()
        tasks = []
        for i in range(round(rate * seconds)):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))
        await asyncio.gather(*tasks)
    return answered


def process_section(tmp: Path) -> str:
    """Metering's part of the whole gateway process, in instructions: real gateways (metering off,
    on, and on but shipping only once 64 KiB wait) under callgrind, idle and then served at fixed
    rates. For each window every gateway's counts are zeroed, it is driven for
    ``PROCESS_SECONDS``, and they are dumped (``callgrind_control``): everything the process ran
    in that time, its event loop, the shipper's posts and the spool's sync thread included."""
    if shutil.which("valgrind") is None:
        return "\n(no valgrind here: no instruction counts)\n"
    dep = Deployment(tmp / "process", clusters=[CLUSTER])
    common = {"KEYPLANE_LIMITER__ALLOW_UNSHARED_REPLICAS": "true", "PYTHONHASHSEED": "0"}
    envs = {
        "off": {"KEYPLANE_USAGE__METERING": "false", **common},
        "on": common,
        "on, shipping only once 64 KiB wait": {"KEYPLANE_USAGE__SHIP_INTERVAL": "60", **common},
    }
    if BASELINE:
        envs["on, baseline"] = {"PYTHONPATH": BASELINE, **common}
    seconds = PROCESS_SECONDS
    rates = [0.0, *PROCESS_RATES]
    counts: dict[str, dict[float, int]] = {label: {} for label in envs}
    try:
        _, auth = _start_with_key(dep)
        gateways: dict[str, tuple[Any, Path]] = {}
        for replica, (label, env) in enumerate(envs.items()):
            gw = dep.gateway(CLUSTER, replica=replica, env=env)
            out = tmp / f"process-{replica}.callgrind"
            gw.args = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *gw.args]
            gw.start(timeout=900)  # minutes under callgrind on a busy machine

            def known(url: str = gw.url) -> bool:
                return httpx2.get(url + "/v1/api-key", headers=auth).status_code == 200

            wait_for(known, timeout=300, what=f"key on {gw.name}")
            asyncio.run(_paced(gw.url + "/v1/chat/completions", auth, 10, 10))  # warm
            gateways[label] = gw, out
        for rate in rates:
            for label, (gw, out) in gateways.items():
                pid = str(pid_of(gw))
                subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
                if rate:
                    url = gw.url + "/v1/chat/completions"
                    answered = asyncio.run(_paced(url, auth, rate, seconds))
                    assert answered == round(rate * seconds), f"{label}: {answered} answered"
                else:
                    time.sleep(seconds)
                subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
                dump = Path(f"{out}.{len(counts[label]) + 1}")  # the dumps are numbered from 1
                counts[label][rate] = wait_for(lambda dump=dump: _summary(dump), timeout=120)
    finally:
        dep.stop_all()

    def per_request(label: str, rate: float) -> float:
        """The window's instructions less an idle window's, per request served in it."""
        return (counts[label][rate] - counts[label][0.0]) / (rate * seconds)

    rows = []
    for label in envs:
        cells = [label, f"{counts[label][0.0] / seconds:,.0f}"]
        for rate in PROCESS_RATES:
            n, off = per_request(label, rate), per_request("off", rate)
            cells.append(f"{n:,.0f} ({n - off:+,.0f}, {(n - off) / off * 100:+.1f} %)")
        rows.append(tuple(cells))
    return (
        f"\n**Metering in the whole gateway process, in instructions** (callgrind; each gateway "
        f"idle, then serving chat requests at each rate, for {seconds:g} s each; per request: the "
        "window's count less the idle one's, over the requests; a full garbage collection or a "
        "post more or less in a window moves it by a few thousand; load average "
        f"{os.getloadavg()[0]:.1f})\n\n"
        + table(
            [
                "gateway",
                "idle, per second",
                *(f"per request at {rate:g}/s (− off)" for rate in PROCESS_RATES),
            ],
            rows,
        )
    )


def _summary(dump: Path) -> int | None:
    """The instructions a callgrind dump counted (None while it is being written)."""
    with contextlib.suppress(FileNotFoundError):
        for line in dump.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    return None


# -- 2. ingest ------------------------------------------------------------------------------------


def usage_frame(time_ms: int, n: int, team_ids: list[str], key_ids: list[str]) -> bytes:
    """The spool frame of the ``n``-th record of an ingest run (also bench_ingest_batches)."""
    from keyplane.usage.record import UsageRecord, frame

    models = ("grok-4", "grok-3", "grok-3-mini")
    return frame(
        UsageRecord(
            time_ms,
            team_ids[n % len(team_ids)],
            key_ids[n % len(key_ids)],
            models[n % 3],
            "chat",
            429 if n % 50 == 0 else 200,
            100 + n % 17,
            400 + n % 31,
            (100 + n % 17) * 2000 + (400 + n % 31) * 10000,
        )
    )


def batches(team_ids: list[str], key_ids: list[str]) -> Iterator[bytes]:
    # Live traffic: the records' minutes are the run's own (0.3 ms apart: a minute of traffic),
    # not yet folded into hours and days (the control plane folds minutes 2 minutes after).
    base = int(time.time() * 1000)
    made = 0
    while made < INGEST_RECORDS:
        frames = [
            usage_frame(base + n * 3 // 10, n, team_ids, key_ids)
            for n in range(made, made + INGEST_BATCH)
        ]
        made += INGEST_BATCH
        yield b"".join(frames)


def ingest_rate(
    tmp: Path,
    engine: str,
    pg_url: str | None,
    db_cpu: Callable[[], float] = lambda: 0.0,
    shippers: int = 1,
) -> tuple[float, float, float, float]:
    """Records/s over HTTP with ``shippers`` gateways posting at once (each its batches in
    order), p99 per batch, and CPU µs per record of the control plane plus the
    database server (``db_cpu``): the figure the machine's load does not inflate; and the CPU
    µs per record of folding those minutes into hours and days afterwards (this process plus
    the database server: the control plane does it in the background)."""
    from keyplane.propagation import feed
    from keyplane.runtime import open_context
    from keyplane.usage import ingest
    from keyplane.usage.wire import INGEST_PATH

    top = f'database_url = "{pg_url}"' if pg_url else ""
    dep = Deployment(tmp / f"ingest-{engine}", clusters=[CLUSTER], top_config=top)
    try:
        control = dep.start_control()
        ctx = open_context(dep.settings())
        # One credential per gateway: a feed credential speaks for the one gateway that uses it.
        credentials = [feed.issue_credential(ctx, cluster=CLUSTER) for _ in range(shippers)]
        ctx.db.dispose()
        team_ids = [str(uuid.uuid4()) for _ in range(20)]
        key_ids = [str(uuid.uuid4()) for _ in range(1000)]
        payloads = list(batches(team_ids, key_ids))
        latencies: list[float] = []

        def ship(i: int) -> None:
            """Gateway ``i``'s share of the batches, one after another, as its shipper posts."""
            headers = {
                "Authorization": f"Bearer {credentials[i]}",
                "x-keyplane-gateway": f"{CLUSTER}/bench-{i}",
                "content-type": "application/octet-stream",
            }
            offset = 0
            with httpx2.Client(base_url=dep.control_url, headers=headers, timeout=60.0) as client:
                for data in payloads[i::shippers]:
                    t0 = time.perf_counter()
                    r = client.post(
                        INGEST_PATH,
                        params={"segment": 1, "start": offset, "end": offset + len(data)},
                        content=data,
                    )
                    assert r.status_code == 200, r.text
                    assert r.json()["accepted"] == INGEST_BATCH, r.text
                    latencies.append(time.perf_counter() - t0)
                    offset += len(data)

        cpu0 = cpu_seconds(pid_of(control)) + db_cpu()
        started = time.perf_counter()
        with ThreadPoolExecutor(shippers) as pool:
            list(pool.map(ship, range(shippers)))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pid_of(control)) + db_cpu() - cpu0
        ctx = open_context(dep.settings())
        try:
            fold0 = time.process_time() + db_cpu()
            until = int(time.time()) + 300
            ingest.fold(ctx, until=until - until % 60)
            fold = time.process_time() + db_cpu() - fold0
        finally:
            ctx.db.dispose()
    finally:
        dep.stop_all()
    per_record = 1e6 / INGEST_RECORDS
    return INGEST_RECORDS / elapsed, percentile(latencies, 99), cpu * per_record, fold * per_record


#: How many gateways post at once in the ingest runs: one, and two (a cluster's pair).
INGEST_SHIPPERS = (1, 2)


def ingest_section(tmp: Path) -> str:
    from tests.support.postgres import PostgresServer, require_postgres

    rows = []

    def row(store: str, shippers: int, rate: float, p99: float, cpu: float, fold: float) -> None:
        per_cpu = 1e6 / (cpu + fold)
        rows.append(
            (store, shippers, f"{rate:,.0f}", f"{p99 * 1000:.0f} ms", f"{cpu:.1f}", f"{fold:.1f}",
             f"{per_cpu:,.0f}")
        )  # fmt: skip
        log(f"ingest {store} × {shippers}: {rate:.0f}/s, {cpu:.1f} + {fold:.1f} µs CPU/record")

    for shippers in INGEST_SHIPPERS:
        row("SQLite", shippers, *ingest_rate(tmp, f"sqlite-{shippers}", None, shippers=shippers))
    try:
        server = PostgresServer(require_postgres(), fsync=True).start()
    except BaseException as error:  # pytest.skip/fail raise BaseException subclasses
        rows.append(("PostgreSQL", "—", f"not run ({type(error).__name__})", "—", "—", "—", "—"))
    else:
        try:
            assert server._proc is not None
            pg_pid = server._proc.pid
            for shippers in INGEST_SHIPPERS:
                measured = ingest_rate(
                    tmp,
                    f"postgresql-{shippers}",
                    server.create_database(f"bench_usage_{shippers}"),
                    lambda: tree_cpu_seconds(pg_pid),
                    shippers=shippers,
                )
                row("PostgreSQL (fsync on)", shippers, *measured)
        finally:
            server.stop()
    return (
        f"\n**Ingest** ({INGEST_RECORDS:,} records in batches of {INGEST_BATCH:,} over HTTP, "
        "1,000 keys × 3 models × 20 teams, a minute of live traffic; aim ≥ 20,000 "
        "records/s), posted by one gateway, then by two at once (each its own credential and "
        "spool, its batches in order). CPU is the control plane's plus the database server's "
        "(for PostgreSQL), from /proc; the fold of those minutes into hours and days (in the "
        "background on a control plane) is measured after, per record; records per CPU-second "
        "(ingest + fold) is what one free core would ingest.\n\n"
        + table(
            [
                "store",
                "gateways",
                "records/s (wall)",
                "p99 per batch",
                "ingest CPU µs/record",
                "fold CPU µs/record",
                "records per CPU-second",
            ],
            rows,
        )
    )


# -- 3. query -------------------------------------------------------------------------------------


def load_rollups(dep: Deployment, team_id: str, key_ids: list[str]) -> int:
    """30 days × 1,000 keys, every key active every hour: hour and day rows written directly."""
    from sqlalchemy import insert, text, update

    from keyplane.runtime import open_context
    from keyplane.usage.schema import ALL_KEYS, usage_days, usage_fold, usage_hours
    from keyplane.usage.store import series_upsert

    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    first_hour = int((now - timedelta(days=DAYS)).replace(hour=0).timestamp())
    ctx = open_context(dep.settings())
    rows = 0
    try:
        for day in range(DAYS + 1):
            hour_rows = []
            day_rows: dict[str, list[int]] = {}
            for h in range(24):
                bucket = first_hour + (day * 24 + h) * 3600
                if bucket >= int(now.timestamp()):
                    break
                hour_total = [0, 0, 0, 0]
                for i, key in enumerate(key_ids):
                    req = 1 + (i + h) % 7
                    prompt, completion = req * 120, req * 480
                    cost = prompt * 2000 + completion * 10000
                    hour_rows.append(
                        {"team_id": team_id, "bucket": bucket, "api_key_id": key,
                         "model": "grok-4", "cluster": CLUSTER, "endpoint": "chat",
                         "status": 200, "requests": req, "prompt_tokens": prompt,
                         "completion_tokens": completion, "cost": cost}
                    )  # fmt: skip
                    for sums in (
                        day_rows.setdefault(key, [0, 0, 0, 0]),
                        hour_total,
                        day_rows.setdefault(ALL_KEYS, [0, 0, 0, 0]),
                    ):
                        for j, v in enumerate((req, prompt, completion, cost)):
                            sums[j] += v
                hour_rows.append(
                    {
                        "team_id": team_id,
                        "bucket": bucket,
                        "api_key_id": ALL_KEYS,
                        "model": "grok-4",
                        "cluster": CLUSTER,
                        "endpoint": "chat",
                        "status": 200,
                        "requests": hour_total[0],
                        "prompt_tokens": hour_total[1],
                        "completion_tokens": hour_total[2],
                        "cost": hour_total[3],
                    }
                )
            if not hour_rows:
                continue
            day_bucket = first_hour + day * 86400
            with ctx.db.write() as conn:
                conn.execute(insert(usage_hours), hour_rows)
                conn.execute(
                    insert(usage_days),
                    [
                        {"team_id": team_id, "bucket": day_bucket, "api_key_id": key,
                         "model": "grok-4", "cluster": CLUSTER, "endpoint": "chat",
                         "status": 200, "requests": s[0], "prompt_tokens": s[1],
                         "completion_tokens": s[2], "cost": s[3]}
                        for key, s in day_rows.items()
                    ],
                )  # fmt: skip
            rows += len(hour_rows) + len(day_rows)
        with ctx.db.write() as conn:  # hours and days hold every minute up to now
            conn.execute(update(usage_fold).values(folded_to=int(now.timestamp())))
            # ...and so does each key's daily series (the fold keeps it with the days).
            conn.execute(text(series_upsert("usage_days", f"team_id = '{team_id}'")))
    finally:
        ctx.db.dispose()
    return rows


def query_plan(dep: Deployment, team_id: str, request: dict[str, Any]) -> list[str]:
    from keyplane.catalog import Catalog
    from keyplane.runtime import open_context
    from keyplane.usage import query

    settings = dep.settings()
    ctx = open_context(settings)
    try:
        with ctx.db.read() as conn:
            return query.plan(conn, team_id, query.parse(request), Catalog(settings))
    finally:
        ctx.db.dispose()


def query_section(tmp: Path) -> str:
    dep = Deployment(tmp / "query", clusters=[CLUSTER])
    try:
        control = dep.start_control()
        team, mgmt = dep.create_team("bench")
        key_ids = [str(uuid.uuid4()) for _ in range(KEYS)]
        log("loading 30 days of rollups")
        loaded = load_rollups(dep, team, key_ids)
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        start = (now - timedelta(days=DAYS)).replace(hour=0)
        end = now.replace(hour=0) + timedelta(days=1)

        def body(unit: str, zone: str = "Etc/GMT", **extra: Any) -> dict[str, Any]:
            fmt = "%Y-%m-%d %H:%M:%S"
            return {
                "analyticsRequest": {
                    "timeRange": {
                        "startTime": start.strftime(fmt),
                        "endTime": end.strftime(fmt),
                        "timezone": zone,
                    },
                    "timeUnit": unit,
                    "values": [{"name": "usd", "aggregation": "AGGREGATION_SUM"}],
                    **extra,
                }
            }

        per_key = ["api_key_id"]
        extremes = [
            {"name": "usd", "aggregation": "AGGREGATION_MIN"},
            {"name": "usd", "aggregation": "AGGREGATION_MAX"},
        ]
        shapes = [
            ("30 days by day, one series", body("TIME_UNIT_DAY")),
            ("30 days by day, per key (1,000 series)", body("TIME_UNIT_DAY", groupBy=per_key)),
            ("30 days, one total per key", body("TIME_UNIT_NONE", groupBy=per_key)),
            ("30 days by hour, one series (720 points)", body("TIME_UNIT_HOUR")),
            ("30 days by day, America/New_York (hourly rows)",
             body("TIME_UNIT_DAY", "America/New_York")),
            ("30 days by day, by unit_type", body("TIME_UNIT_DAY", groupBy=["unit_type"])),
            ("30 days, per key, MIN and MAX per request (extremes not loaded)",
             body("TIME_UNIT_NONE", groupBy=per_key, values=extremes)),
        ]  # fmt: skip
        rows = []
        plans = []
        with connect(dep.control_url, mgmt) as c:
            for name, request in shapes:
                path = f"/v1/billing/teams/{team}/usage"
                first = c.post(path, json=request)
                assert first.status_code == 200, first.text
                series = len(first.json()["timeSeries"])
                times = []
                cpu0 = cpu_seconds(pid_of(control))
                for _ in range(QUERY_RUNS):
                    t0 = time.perf_counter()
                    assert c.post(path, json=request).status_code == 200
                    times.append(time.perf_counter() - t0)
                cpu = (cpu_seconds(pid_of(control)) - cpu0) / QUERY_RUNS
                rows.append(
                    (name, series, f"{percentile(times, 50) * 1000:.1f}",
                     f"{percentile(times, 99) * 1000:.1f}", f"{cpu * 1000:.1f}")
                )  # fmt: skip
                plans.append((name, query_plan(dep, team, request)))
                log(f"{name}: p99 {percentile(times, 99) * 1000:.1f} ms")
    finally:
        dep.stop_all()
    return (
        f"\n**Usage RPC over HTTP** (SQLite; {DAYS} days × {KEYS:,} keys, every key active every "
        f"hour: {loaded:,} hourly and daily rollup rows; {QUERY_RUNS} runs each; aim p99 ≤ 100 ms"
        "; control-plane CPU per query from /proc)\n\n"
        + table(["query", "series", "p50 ms", "p99 ms", "CPU ms/query"], rows)
        + "\n\nQuery plans (SQLite `EXPLAIN QUERY PLAN` of the one statement each answer runs):\n\n"
        + "\n".join(f"- {name}: {' / '.join(steps)}" for name, steps in plans)
    )


SECTIONS: dict[str, Callable[[Path], str]] = {
    "gateway": gateway_section,
    "inprocess": inprocess_section,
    "instructions": instructions_section,
    "process": process_section,
    "ingest": ingest_section,
    "query": query_section,
}


def main() -> None:
    """``bench_usage.py [gateway|ingest|query ...]``: the sections named (all by default), so one
    aim can be measured again on its own."""
    chosen = sys.argv[1:] or list(SECTIONS)
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        sys.exit(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    print(header("Usage: metering cost, ingest rate, query latency"))
    with tempfile.TemporaryDirectory(prefix="keyplane-bench-usage-") as raw:
        tmp = Path(raw)
        for name in chosen:
            print(SECTIONS[name](tmp))
    print(footer())


if __name__ == "__main__":
    main()
