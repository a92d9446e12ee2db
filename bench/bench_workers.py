"""Using the machine (#11 items 3 and 4): gateway throughput from 1 to 2 worker processes, and the
latency a gateway adds at a fixed offered load.

    .venv/bin/python bench/bench_workers.py [--seconds 4] [--connections 32]
        [--rate R] [--pin] [--realtime off|on|both] [--control-idle] [--latency-only]
        [--clock thread|loop]

The upstream is bench/_stub_upstream.py (one fixed chat completion from a raw asyncio protocol, a
few µs per request) and the load comes from bench/_loadgen.py in its own process (requests
encoded once, answers parsed to their length), so the gateway is what is measured. Prints
Markdown:

(a) saturation (closed loop): requests/s through ``keyplane serve gateway --workers 1`` and
    ``--workers 2``, both with the Redis limiter (the one that keeps limits exact across workers,
    so only the worker count differs), interleaved in rounds, with the CPU per request of the
    gateway (all its processes), the load generator, the stub, redis-server and the control plane
    (which ingests the usage the gateways ship): on a machine with
    fewer cores than those processes need, the sum of their CPU per request bounds the rate, and
    the table shows it;
(b) latency at a fixed offered load (open loop) of half the 1-worker gateway's saturation rate
    with in-memory limits, straight to the stub and through the gateway: p50/p90/p99 and what the
    gateway adds, from each request's scheduled time and from its write, with the generator's
    lag behind its schedule and the stub's and the gateway's CPU per request at that rate, and
    how long each process (gateway, stub, generator) waited on a run queue for a core, per
    request (/proc/<tid>/schedstat). The schedule is steady (fixed intervals of 1/rate, as wrk2's),
    not Poisson. ``--pin`` puts the gateway on a core of its own and the rest on another.
    ``--realtime both`` interleaves each round with one in which the gateway, the stub and the
    generator run in the real-time class (SCHED_FIFO): the other processes on the machine (other
    sessions' work, the control plane, the bench itself) cannot keep them off a core, so those
    rows show the latency of the path itself, the others what this machine's scheduling adds.
    ``--control-idle`` adds rounds with the control plane (which ingests the gateway's usage, as
    much CPU a request as the gateway on this machine) in SCHED_IDLE.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from _harness import (
    PYTHON,
    Deployment,
    Proc,
    connect,
    cpu_seconds,
    footer,
    free_port,
    header,
    log,
    pid_of,
    pin_tree,
    stop_servers_on_sigterm,
    table,
    tree_cpu_seconds,
    tree_schedstat,
    wait_for,
)

CLUSTER = "us-east-1"
MODEL = "bench-stub"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1}
HERE = Path(__file__).resolve().parent
ROUNDS = 3
WARMUP = 1.5


def start_stub(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    out = log_path.open("ab")
    try:
        stub = subprocess.Popen(
            [PYTHON, str(HERE / "_stub_upstream.py"), str(port)], stdout=out, stderr=out
        )
    finally:
        out.close()
    return stub


#: The cores the load generator runs on (``--pin``), None for any.
GENERATOR_CPUS: set[int] | None = None
#: (b)'s processes in the real-time class (``--realtime``): no other process's work delays them.
REALTIME = False


#: (b)'s ways of scheduling the processes, each a table: what it means.
VARIANTS = {
    "ordinary": "Ordinary scheduling (every process in the default class).",
    "control idle": "The control plane in SCHED_IDLE (it runs on what the measured processes leave "
    "of the cores, as if on machines of its own), every other process in the default class.",
    "real-time": "The gateway, the stub and the generator in the real-time class (SCHED_FIFO, "
    "priority 1): no other process's work keeps them off a core.",
}


def scheduling(variant: str, path: tuple[int, ...], control: int) -> None:
    """Schedule the processes for ``variant`` (of ``VARIANTS``): every thread of the ``path``
    processes (and the generators started from now on) in SCHED_FIFO at the lowest priority or
    in the default class; the ``control`` plane's in SCHED_IDLE or in the default class."""
    global REALTIME
    REALTIME = variant == "real-time"
    fifo, other = (os.SCHED_FIFO, 1), (os.SCHED_OTHER, 0)
    placing = [(pid, fifo if REALTIME else other) for pid in path]
    placing.append((control, (os.SCHED_IDLE, 0) if variant == "control idle" else other))
    for pid, (policy, priority) in placing:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setscheduler(int(tid), policy, os.sched_param(priority))
            except ProcessLookupError:  # a thread that just ended
                continue
            except PermissionError:
                raise SystemExit("--realtime needs root or CAP_SYS_NICE") from None


def _generator_setup() -> None:
    if GENERATOR_CPUS is not None:
        os.sched_setaffinity(0, GENERATOR_CPUS)
    if REALTIME:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))


def load(url: str, auth: str | None, seconds: float, **mode: float | str) -> dict[str, Any]:
    """Run bench/_loadgen.py against ``url``: closed loop (``connections``) or open (``rate``)."""
    argv = [PYTHON, str(HERE / "_loadgen.py"), url, "--body", json.dumps(BODY)]
    argv += ["--seconds", str(seconds)]
    for name, value in mode.items():
        argv += [f"--{name}", str(value)]
    # The key goes by environment, not argv: a process list or an error must not show it.
    env = {**os.environ, "LOADGEN_AUTHORIZATION": f"Bearer {auth}" if auth else ""}
    done = subprocess.run(
        argv,
        capture_output=True,
        timeout=seconds + 60,
        env=env,
        preexec_fn=_generator_setup,
    )
    if done.returncode != 0:
        raise SystemExit(f"load generator failed:\n{done.stderr.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def key_for(dep: Deployment, processes: int) -> str:
    team, mgmt = dep.create_team("bench")
    with connect(dep.control_url, mgmt) as c:
        key = c.post(
            f"/auth/teams/{team}/api-keys",
            json={"name": "bench", "acls": ["api-key:endpoint:*", "api-key:model:*"],
                  "qps": 1_000_000, "qpm": 100_000_000, "tpm": "100000000000"},
        ).json()  # fmt: skip
    secret: str = key["apiKey"]
    from keyplane.propagation import feed
    from tests.support.procs import admin_context

    def synced() -> bool:  # every gateway process (each worker too) has applied every change
        with admin_context(dep) as ctx:
            current, rows = feed.cluster_view(ctx)
        live = [g for g in rows if g.live]
        return len(live) == processes and all(g.applied_revision >= current for g in live)

    wait_for(synced, timeout=60, what="the key on every gateway process")
    return secret


def saturation(
    targets: list[tuple[str, str, Proc]],
    secret: str,
    seconds: float,
    connections: int,
    others: dict[str, int],
) -> list[dict[str, Any]]:
    """Each target driven ROUNDS times for ``seconds``, interleaved; totals per target."""
    acc = {tag: {"n": 0, "elapsed": 0.0, "cpu": 0.0, "gen": 0.0, **dict.fromkeys(others, 0.0)}
           for tag, _, _ in targets}  # fmt: skip
    url_of = {tag: proc.url + "/v1/chat/completions" for tag, _, proc in targets}
    for tag, _, _ in targets:
        load(url_of[tag], secret, WARMUP, connections=connections)
    for round_ in range(ROUNDS):
        for tag, name, proc in targets:
            log(f"saturation round {round_ + 1}/{ROUNDS}: {name}")
            g0 = tree_cpu_seconds(pid_of(proc))
            o0 = {k: cpu_seconds(pid) for k, pid in others.items()}
            result = load(url_of[tag], secret, seconds, connections=connections)
            a = acc[tag]
            a["cpu"] += tree_cpu_seconds(pid_of(proc)) - g0
            for k, pid in others.items():
                a[k] += cpu_seconds(pid) - o0[k]
            a["n"] += result["requests"]
            a["elapsed"] += result["elapsed"]
            a["gen"] += result["cpu_us"] * result["requests"] / 1e6
            bad = {s: n for s, n in result["statuses"].items() if s != "200"}
            if bad:
                raise SystemExit(f"{name}: answers other than 200: {bad}")
    rows = []
    for tag, name, _ in targets:
        a = acc[tag]
        n = max(1, a["n"])
        rows.append({"tag": tag, "name": name, "n": a["n"], "rate": a["n"] / a["elapsed"],
                     "gw": a["cpu"] / n * 1e6, "gen": a["gen"] / n * 1e6,
                     **{k: a[k] / n * 1e6 for k in others}})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0, help="Length of each measured run.")
    parser.add_argument("--connections", type=int, default=32, help="Closed-loop connections.")
    parser.add_argument(
        "--rate",
        type=int,
        default=0,
        help="(b)'s offered load, requests/s (default: half the measured saturation); fixed, "
        "two runs (say, two commits) compare at the same load.",
    )
    parser.add_argument(
        "--clock",
        choices=("thread", "loop"),
        default="thread",
        help="(b)'s schedule: kept by a thread in nanosleep's precision, or (loop) "
        "by the event loop's millisecond timers (this bench until now), which send in bursts.",
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="(b): the gateway on a core of its own and the generator and the stub on another, "
        "as a deployment gives a gateway its own cores (default: every process on any core; "
        "on a machine others load, a pinned gateway cannot flee a busy core).",
    )
    parser.add_argument(
        "--realtime",
        choices=("off", "on", "both"),
        default="off",
        help="(b): the gateway, the stub and the generator in the real-time class (SCHED_FIFO, "
        "needs root or CAP_SYS_NICE), so no other process's work keeps them off a core: the "
        "gateway's own latency on a loaded machine (both: interleaved with ordinary rounds).",
    )
    parser.add_argument(
        "--control-idle",
        action="store_true",
        help="(b): also rounds with the control plane in SCHED_IDLE, so its usage ingest takes "
        "only what the measured processes leave of the cores, as a control plane on other "
        "machines would (interleaved with the others).",
    )
    parser.add_argument(
        "--latency-only", action="store_true", help="Only (b), the latency at a fixed load."
    )
    args = parser.parse_args()
    global GENERATOR_CPUS
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise SystemExit("bench_workers needs redis-server on PATH (workers share limits in it)")
    stop_servers_on_sigterm()
    import tempfile

    from tests.support.redis import RedisServer

    print(header("Gateway workers and latency at a fixed load (bench/bench_workers.py)"))
    out: list[str] = []
    redis = RedisServer(redis_bin)
    redis.start()
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp_name:
        tmp = Path(tmp_name)
        stub_port = free_port()
        stub = start_stub(stub_port, tmp / "stub.log")
        dep = Deployment(
            tmp,
            clusters=[CLUSTER],
            extra_config=(
                "[limiter]\n"
                'backend = "redis"\n'
                f'redis_url = "{redis.url}"\n'
                "[[models]]\n"
                f'name = "{MODEL}"\n'
                f'upstream_url = "http://127.0.0.1:{stub_port}/v1"\n'
            ),
        )
        try:
            control = dep.start_control()
            one = dep.start_gateway(CLUSTER)
            two = dep.start_gateway(CLUSTER, replica=1, workers=2)
            memory = dep.start_gateway(
                CLUSTER,
                replica=2,
                env={"KEYPLANE_LIMITER__BACKEND": "memory",
                     "KEYPLANE_LIMITER__ALLOW_UNSHARED_REPLICAS": "true"},
            )  # fmt: skip
            secret = key_for(dep, processes=4)
            redis_pid = redis._proc.pid if redis._proc is not None else 0
            # The control plane ingests the usage the gateways ship: on the same cores, its CPU
            # per request bounds the rate as the others' does.
            others = {"stub": stub.pid, "redis": redis_pid, "control": pid_of(control)}
            if not args.latency_only:
                workers(out, one, two, secret, args.seconds, args.connections, others)

            # (b) latency at a fixed offered load: half the 1-worker saturation, memory limiter.
            cores = sorted(os.sched_getaffinity(0))
            placed = "every process on any of the cores"
            if args.pin and len(cores) >= 2:
                gateway_cpus, rest_cpus = {cores[-1]}, {cores[0]}
                pin_tree(pid_of(memory), gateway_cpus)
                pin_tree(stub.pid, rest_cpus)
                GENERATOR_CPUS = rest_cpus
                placed = (
                    f"the gateway pinned to core {cores[-1]}, the generator and the stub to core "
                    f"{cores[0]} (other processes unpinned)"
                )
            sat = saturation([("mem", "1 worker (memory limiter)", memory)], secret,
                             args.seconds, args.connections, others)[0]  # fmt: skip
            rate = args.rate or round(sat["rate"] / 2)
            log(f"open loop at {rate}/s (saturation {sat['rate']:.0f}/s)")
            fixed: dict[tuple[str, str], dict[str, Any]] = {}
            stub_url = f"http://127.0.0.1:{stub_port}/v1/chat/completions"
            server_pid = {"direct": stub.pid, "gateway": pid_of(memory)}
            variants = ["ordinary"] if args.realtime != "on" else []
            variants += ["control idle"] if args.control_idle else []
            variants += ["real-time"] if args.realtime != "off" else []
            path = (pid_of(memory), stub.pid)
            for round_ in range(ROUNDS):
                for variant in variants:
                    scheduling(variant, path, pid_of(control))
                    for tag, url, auth in (
                        ("direct", stub_url, None),
                        ("gateway", memory.url + "/v1/chat/completions", secret),
                    ):
                        log(f"open loop round {round_ + 1}/{ROUNDS}: {tag} ({variant})")
                        cpu0 = tree_cpu_seconds(server_pid[tag])
                        queued0 = tree_schedstat(server_pid[tag])
                        stub0 = tree_schedstat(stub.pid)
                        control0 = tree_cpu_seconds(pid_of(control))
                        r = load(url, auth, args.seconds, rate=rate, connections=64,
                                 clock=args.clock)  # fmt: skip
                        n = max(1, r["requests"])
                        r["server_us"] = (tree_cpu_seconds(server_pid[tag]) - cpu0) / n * 1e6
                        queued1 = tree_schedstat(server_pid[tag])
                        stub1 = tree_schedstat(stub.pid)
                        r["server_runq_us"] = (queued1[0] - queued0[0]) / n * 1e6
                        r["server_slices"] = (queued1[1] - queued0[1]) / n
                        r["stub_runq_us"] = (stub1[0] - stub0[0]) / n * 1e6
                        # The usage the gateway ships is ingested there, on the same cores.
                        r["control_us"] = (tree_cpu_seconds(pid_of(control)) - control0) / n * 1e6
                        if set(r["statuses"]) != {"200"}:
                            raise SystemExit(f"{tag}: answers other than 200: {r['statuses']}")
                        keep = fixed.get((tag, variant))
                        # Of the rounds, the one with the lowest p99: the machine is shared, and a
                        # neighbour's burst lands in a round, not in the path.
                        if keep is None or r["ms"]["99"] < keep["ms"]["99"]:
                            fixed[(tag, variant)] = r
            scheduling("ordinary", path, pid_of(control))
            clock = {"thread": "a thread of its own", "loop": "the event loop's ms timers"}
            out.append(
                f"(b) Latency at a fixed offered load: {rate:,}/s "
                f"({'given' if args.rate else 'half of'} the 1-worker gateway's saturation, "
                f"{sat['rate']:,.0f}/s, memory limiter), open loop "
                f"(latency from each request's scheduled time, fixed intervals of 1/rate — not "
                f"Poisson — ≤ 64 connections, the schedule kept by {clock[args.clock]}); "
                f"{placed}; "
                f"{args.seconds:.0f} s per run, best of {ROUNDS} interleaved runs by p99 (each "
                "way of scheduling below in every round). "
                '"From the write": from the request\'s write to its answer (without the '
                "generator's own lag behind the schedule, its p50 in the next column). Server "
                "CPU: the stub's or the gateway's, per request at this rate. Run-queue wait: "
                "the time a process's threads were runnable but waiting for a core "
                "(/proc/<tid>/schedstat), per request. Control plane CPU: what it spent per "
                "request meanwhile (it ingests the usage the gateway ships, on the same cores).\n"
            )
            for variant in variants:
                d, g = fixed[("direct", variant)], fixed[("gateway", variant)]
                out.append(f"\n{VARIANTS[variant]}\n")
                latency_table(out, d, g)
                busy = g["server_us"] * g["rate"] / 1e6
                out.append(
                    f"\nThe gateway's CPU at {rate:,}/s: {g['server_us']:.0f} µs/req "
                    f"(at saturation {sat['gw']:.0f}), so one core {busy:.0%} busy.\n"
                )
        finally:
            dep.stop_all()
            stub.terminate()
            stub.wait(timeout=10)
            redis.close()
    print("\n".join(out))
    print(footer())


def latency_table(out: list[str], d: dict[str, Any], g: dict[str, Any]) -> None:
    """(b)'s table: the direct path, the gateway's, and what the gateway adds."""
    rows_b = []
    for tag, r in (("direct to the stub", d), ("through the gateway", g)):
        rows_b.append([tag, r["requests"], f"{r['rate']:,.0f}",
                       *(f"{r['ms'][p]:.2f}" for p in ("50", "90", "99", "99.9")),
                       *(f"{r['service_ms'][p]:.2f}" for p in ("50", "99")),
                       f"{r['lag_ms']['50']:.2f}", r["late"],
                       f"{r['server_us']:.0f}", f"{r['server_runq_us']:.0f}",
                       f"{r['server_slices']:.2f}", f"{r['stub_runq_us']:.0f}",
                       f"{r['control_us']:.0f}", f"{r['runq_us']:.0f}"])  # fmt: skip
    added = [f"**{g['ms'][p] - d['ms'][p]:.2f}**" for p in ("50", "90", "99", "99.9")]
    added += [f"**{g['service_ms'][p] - d['service_ms'][p]:.2f}**" for p in ("50", "99")]
    rows_b.append(["**added by the gateway**", "", "", *added, *[""] * 9])
    out.append(table(
        ["path", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms",
         "from the write: p50 ms", "p99 ms", "generator lag p50 ms",
         "started late (no free connection)", "server CPU µs/req",
         "server run-queue wait µs/req", "server time slices /req",
         "stub run-queue wait µs/req", "control plane CPU µs/req",
         "generator run-queue wait µs/req"],
        rows_b,
    ))  # fmt: skip


def _all(row: dict[str, Any]) -> float:
    """CPU µs per request of every process a request passes through or sets working."""
    return float(row["gw"] + row["gen"] + row["stub"] + row["redis"] + row["control"])


def workers(
    out: list[str],
    one: Proc,
    two: Proc,
    secret: str,
    seconds: float,
    connections: int,
    others: dict[str, int],
) -> None:
    """(a): 1 and 2 workers at saturation, both with the Redis limiter."""
    rows = saturation(
        [("w1", "1 worker (Redis limiter)", one), ("w2", "2 workers (Redis limiter)", two)],
        secret,
        seconds,
        connections,
        others,
    )
    scale = rows[1]["rate"] / rows[0]["rate"]
    out.append(
        f"(a) Saturation: {connections} keep-alive connections from one load "
        f"generator process, each path {ROUNDS}× {seconds:.0f} s interleaved (after a "
        f"{WARMUP} s warm-up); chat completions answered by the stub upstream.\n"
    )
    out.append(table(
        ["gateway", "requests", "req/s", "gateway CPU µs/req (all processes)",
         "load generator µs/req", "stub µs/req", "redis-server µs/req",
         "control plane µs/req (usage ingest)", "all five µs/req"],
        [[r["name"], r["n"], f"{r['rate']:,.0f}", f"{r['gw']:.0f}", f"{r['gen']:.0f}",
          f"{r['stub']:.0f}", f"{r['redis']:.0f}", f"{r['control']:.0f}",
          f"{_all(r):.0f}"] for r in rows],
    ))  # fmt: skip
    cores = float(len(os.sched_getaffinity(0)))
    bound = [cores / (_all(r) / 1e6) for r in rows]
    out.append(
        f"\n2 workers ÷ 1 worker: **{scale:.2f}×** requests/s. With {cores:.0f} cores "
        "shared by everything above, the machine cannot carry more than cores ÷ (sum of "
        f"CPU per request): {bound[0]:,.0f}/s and {bound[1]:,.0f}/s here, so "
        "the ratio shows scaling only when the gateway's share dominates.\n"
    )


if __name__ == "__main__":
    sys.exit(main())
