"""Propagation benchmark, against real processes: one control plane and two gateways
(us-east-1, eu-west-1), started as ``keyplane serve ...`` exactly as in production.

Latency: from the HTTP answer of a mutation to the moment BOTH gateways enforce it, found by
polling both gateways' ``GET /v1/api-key`` with the key's secret in tight loops:
  create → 200 on both; update (name, fieldMask "name") → the new name on both;
  delete → 400 on both.
CHANGES changes (create, update, delete, create, ...), first with the system otherwise idle
(IDLE_CHANGES), then while a separate process drives BACKGROUND_RATE other changes per second
(creates and name updates of another team; a rate-limited loop, achieved rate reported). Each
phase stops at PHASE_SECONDS. The latency phases run on the control plane's SQLite and on a
throwaway PostgreSQL server (started by the bench, fsync on, stopped at the end), one after the
other, and the report puts the two side by side.

Snapshot: with SNAPSHOT_KEYS keys loaded in-process, a fresh gateway (empty data directory) is
timed from spawn to /healthz reporting the current revision, with its RSS after; then it is
restarted on the replica it holds on disk and timed until it serves.

Prints a Markdown report on stdout; progress on stderr. Run from the repository root:
``.venv/bin/python bench/bench_propagation.py [--backend sqlite|postgresql|both]`` (default both,
or BENCH_BACKENDS). Smaller runs: BENCH_IDLE_CHANGES, BENCH_CHANGES, BENCH_PHASE_SECONDS (bound
of one measured phase), BENCH_KEYS (snapshot keys; 0 skips the snapshot part). The background
target is BENCH_BACKGROUND_RATE changes/s (default 200): where a control plane cannot reach it,
the stores carry different loads, which the report points out; rerun with a rate both reach to
compare them under one load.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as harness
import httpx2

CLUSTERS = ("us-east-1", "eu-west-1")
CHANGES = int(os.environ.get("BENCH_CHANGES", "1000"))
IDLE_CHANGES = int(os.environ.get("BENCH_IDLE_CHANGES", "300"))
BACKGROUND_RATE = float(os.environ.get("BENCH_BACKGROUND_RATE", "200"))
BACKGROUND_THREADS = 6
SNAPSHOT_KEYS = int(os.environ.get("BENCH_KEYS", "100000"))
CHANGE_TIMEOUT = 5.0  # a change not enforced on both gateways by then counts as timed out
# bound on one measured phase (the run stops short of CHANGES then)
PHASE_SECONDS = float(os.environ.get("BENCH_PHASE_SECONDS", "180"))


# -- background load (a separate process, so it does not share the poller's GIL) ----------------


def background(
    url: str,
    team_id: str,
    secret: str,
    rate: float,
    stop: Any,
    results: Any,
) -> None:
    lock = threading.Lock()
    issued = 0
    done: list[float] = []
    errors: dict[str, int] = {}
    ids: list[str] = []
    start = time.monotonic()
    rng = random.Random(7)

    def worker() -> None:
        nonlocal issued
        with harness.connect(url, secret) as client:
            while not stop.is_set():
                with lock:
                    n = issued
                    issued += 1
                    create = len(ids) < 50 or rng.random() < 0.5
                    target = None if create else rng.choice(ids)
                due = start + n / rate
                delay = due - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
                try:
                    if create:
                        r = client.post(
                            f"/auth/teams/{team_id}/api-keys",
                            json={"name": f"bg {n}", "acls": ["api-key:endpoint:chat"]},
                        )
                    else:
                        r = client.put(
                            f"/auth/api-keys/{target}",
                            json={"apiKey": {"name": f"bg {n}"}, "fieldMask": "name"},
                        )
                    status = str(r.status_code)
                except httpx2.HTTPError as error:
                    status = type(error).__name__
                with lock:
                    if status == "200":
                        done.append(time.time())
                        if create:
                            ids.append(r.json()["apiKeyId"])
                    else:
                        errors[status] = errors.get(status, 0) + 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(BACKGROUND_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put({"done": done, "errors": errors})


# -- measured changes ---------------------------------------------------------------------------


class Prober:
    """Polls both gateways' GET /v1/api-key until a condition holds on both."""

    def __init__(self, urls: list[str]) -> None:
        self.clients = [httpx2.Client(base_url=u, timeout=5.0) for u in urls]
        self.polls = 0

    def close(self) -> None:
        for c in self.clients:
            c.close()

    def until(self, secret: str, condition: Any, t0: float) -> float | None:
        """Seconds from ``t0`` until ``condition(response)`` held on every gateway, or None."""
        headers = {"Authorization": f"Bearer {secret}"}
        pending = list(range(len(self.clients)))
        while pending:
            for i in list(pending):
                r = self.clients[i].get("/v1/api-key", headers=headers)
                self.polls += 1
                if condition(r):
                    pending.remove(i)
            if time.perf_counter() - t0 > CHANGE_TIMEOUT:
                return None
        return time.perf_counter() - t0


def measure(
    control_url: str, gateway_urls: list[str], team_id: str, secret: str, changes: int
) -> dict[str, Any]:
    lat: dict[str, list[float]] = {"create": [], "update": [], "delete": []}
    mutation: list[float] = []
    timeouts: dict[str, int] = {"create": 0, "update": 0, "delete": 0}
    prober = Prober(gateway_urls)
    started = time.perf_counter()
    n = 0
    try:
        with harness.connect(control_url, secret) as client:
            while n < changes and time.perf_counter() - started < PHASE_SECONDS:
                # create
                m0 = time.perf_counter()
                r = client.post(
                    f"/auth/teams/{team_id}/api-keys",
                    json={"name": f"probe {n}", "acls": ["api-key:endpoint:chat"]},
                )
                t0 = time.perf_counter()
                r.raise_for_status()
                mutation.append(t0 - m0)
                key = r.json()
                key_id, key_secret = key["apiKeyId"], key["apiKey"]
                _record(lat, timeouts, "create", prober.until(key_secret, _is(200), t0))
                n += 1
                if n >= changes:
                    break
                # update: a new name
                new_name = f"probe {n} renamed"
                m0 = time.perf_counter()
                r = client.put(
                    f"/auth/api-keys/{key_id}",
                    json={"apiKey": {"name": new_name}, "fieldMask": "name"},
                )
                t0 = time.perf_counter()
                r.raise_for_status()
                mutation.append(t0 - m0)
                _record(lat, timeouts, "update", prober.until(key_secret, _named(new_name), t0))
                n += 1
                if n >= changes:
                    break
                # delete
                m0 = time.perf_counter()
                r = client.delete(f"/auth/api-keys/{key_id}")
                t0 = time.perf_counter()
                r.raise_for_status()
                mutation.append(t0 - m0)
                _record(lat, timeouts, "delete", prober.until(key_secret, _is(400), t0))
                n += 1
    finally:
        prober.close()
    return {
        "lat": lat,
        "timeouts": timeouts,
        "mutation": mutation,
        "changes": n,
        "elapsed": time.perf_counter() - started,
        "polls": prober.polls,
    }


def _is(status: int) -> Any:
    return lambda r: r.status_code == status


def _named(name: str) -> Any:
    return lambda r: r.status_code == 200 and r.json().get("name") == name


def _record(
    lat: dict[str, list[float]], timeouts: dict[str, int], op: str, v: float | None
) -> None:
    if v is None:
        timeouts[op] += 1
    else:
        lat[op].append(v)


def latency_rows(label: str, result: dict[str, Any]) -> list[list[Any]]:
    lat = result["lat"]
    every = [v for vs in lat.values() for v in vs]
    rows = []
    for op, values in [("all", every), *lat.items()]:
        tmo = sum(result["timeouts"].values()) if op == "all" else result["timeouts"][op]
        rows.append(
            [
                label,
                op,
                len(values),
                tmo,
                harness.ms(harness.percentile(values, 50)),
                harness.ms(harness.percentile(values, 90)),
                harness.ms(harness.percentile(values, 99)),
                harness.ms(max(values)) if values else "n/a",
            ]
        )
    return rows


def wait_synced(url: str, revision: int | None = None, timeout: float = 30.0) -> dict[str, Any]:
    def ok() -> dict[str, Any] | None:
        response = httpx2.get(url + "/healthz", headers=harness.OPERATOR, timeout=2.0)
        body: dict[str, Any] = response.json()
        if body.get("synced") and (revision is None or body.get("revision") == revision):
            return body
        return None

    found: dict[str, Any] = harness.wait_for(ok, timeout=timeout, what=f"gateway {url} synced")
    return found


# -- phases -------------------------------------------------------------------------------------


def latency_phase(tmp: Path, backend: str = "sqlite", pg: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"backend": backend}
    if pg is not None:
        url = pg.database("bench_propagation")
        top = f'database_url = "{url}"'
        dep = harness.Deployment(
            tmp / f"latency-{backend}", clusters=list(CLUSTERS), top_config=top
        )
        out["store"] = pg.label()
    else:
        dep = harness.Deployment(tmp / f"latency-{backend}", clusters=list(CLUSTERS))
        out["store"] = "SQLite (WAL, synchronous=NORMAL, the default)"
    stop = results = proc = None
    try:
        team, secret = dep.create_team("probe")
        bg_team, bg_secret = dep.create_team("background")
        dep.start_control()
        gws = [dep.start_gateway(c) for c in CLUSTERS]
        urls = [g.url for g in gws]
        for u in urls:
            wait_synced(u)
        # warm-up: a few changes, not counted
        measure(dep.control_url, urls, team, secret, 9)

        harness.log(f"{backend}: latency, idle: {IDLE_CHANGES} changes ...")
        out["idle"] = measure(dep.control_url, urls, team, secret, IDLE_CHANGES)

        harness.log(
            f"{backend}: latency under load: background {BACKGROUND_RATE:.0f} changes/s, "
            f"up to {CHANGES} changes or {PHASE_SECONDS:.0f} s"
        )
        ctx = mp.get_context("spawn")
        stop, results = ctx.Event(), ctx.Queue()
        proc = ctx.Process(
            target=background,
            args=(dep.control_url, bg_team, bg_secret, BACKGROUND_RATE, stop, results),
            daemon=True,
        )
        proc.start()
        time.sleep(3.0)  # let the background settle into its rate
        cpu0 = {p.name: harness.cpu_seconds(harness.pid_of(p)) for p in dep.procs}
        pg_cpu0 = pg.cpu_seconds() if pg is not None else 0.0
        window = (time.time(), 0.0)
        loaded = measure(dep.control_url, urls, team, secret, CHANGES)
        window = (window[0], time.time())
        cpu = {p.name: harness.cpu_seconds(harness.pid_of(p)) - cpu0[p.name] for p in dep.procs}
        if pg is not None:
            cpu["postgresql (all its processes)"] = pg.cpu_seconds() - pg_cpu0
        stop.set()
        bg = results.get(timeout=30)
        proc.join(timeout=10)
        in_window = [t for t in bg["done"] if window[0] <= t <= window[1]]
        out["loaded"] = loaded
        out["bg_rate"] = len(in_window) / (window[1] - window[0])
        out["bg_errors"] = bg["errors"]
        out["cpu"] = {k: v / (window[1] - window[0]) for k, v in cpu.items()}
        out["gateway_revision"] = [
            httpx2.get(u + "/healthz", headers=harness.OPERATOR).json()["revision"] for u in urls
        ]
        out["rss"] = {p.name: harness.rss_kib(harness.pid_of(p)) for p in dep.procs}
    finally:
        if stop is not None:
            stop.set()
        if proc is not None and proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
        dep.stop_all()
    return out


def snapshot_phase(tmp: Path) -> dict[str, Any]:
    dep = harness.Deployment(tmp / "snapshot", clusters=list(CLUSTERS))
    out: dict[str, Any] = {}
    try:
        team, _secret = dep.create_team("snapshot")
        harness.log(f"snapshot: populating {SNAPSHOT_KEYS} keys in-process ...")
        loaded = harness.populate(dep, team, SNAPSHOT_KEYS)
        harness.log(f"populated in {loaded.seconds:.1f}s")
        out["populate_s"] = loaded.seconds
        current = harness.current_revision(dep)
        out["revision"] = current
        control = dep.start_control()
        control_pid = harness.pid_of(control)
        out["control_rss_before"] = harness.rss_kib(control_pid)
        sample_id, sample_secret = loaded.samples[0]

        cluster = CLUSTERS[0]
        peak = [0]

        def sample_peak(pid: int, until: threading.Event) -> None:
            while not until.is_set():
                peak[0] = max(peak[0], harness.rss_kib(pid) or 0)
                until.wait(0.05)

        harness.log("snapshot: fresh gateway ...")
        gw = dep.gateway(cluster)
        done = threading.Event()
        watcher = threading.Thread(target=sample_peak, args=(control_pid, done), daemon=True)
        watcher.start()
        t0 = time.perf_counter()
        gw.start(timeout=60)
        out["fresh_port_s"] = time.perf_counter() - t0
        wait_synced(gw.url, current, timeout=120)
        out["fresh_synced_s"] = time.perf_counter() - t0
        done.set()
        watcher.join()
        out["control_rss_peak"] = peak[0]
        r = httpx2.get(gw.url + "/v1/api-key", headers={"Authorization": f"Bearer {sample_secret}"})
        assert r.status_code == 200, r.text
        assert r.json()["api_key_id"] == sample_id, r.text
        gpid = harness.pid_of(gw)
        out["fresh_rss"] = harness.rss_kib(gpid)
        time.sleep(2.0)
        out["fresh_rss_2s"] = harness.rss_kib(gpid)
        out["control_rss_after"] = harness.rss_kib(control_pid)
        replica_db = dep.data_dir / "gateways" / cluster / "replica.db"
        out["replica_mib"] = sum(
            p.stat().st_size for p in replica_db.parent.glob("replica.db*")
        ) / (1 << 20)

        harness.log("snapshot: restart on the local replica ...")
        gw.stop()
        again = dep.gateway(cluster)
        t0 = time.perf_counter()
        again.start(timeout=60)  # /healthz answers only once the replica is loaded
        out["restart_port_s"] = time.perf_counter() - t0
        r = httpx2.get(
            again.url + "/v1/api-key", headers={"Authorization": f"Bearer {sample_secret}"}
        )
        out["restart_serves_s"] = time.perf_counter() - t0
        assert r.status_code == 200, r.text
        wait_synced(again.url, current, timeout=60)
        out["restart_synced_s"] = time.perf_counter() - t0
        out["restart_rss"] = harness.rss_kib(harness.pid_of(again))
    finally:
        dep.stop_all()
    return out


def _every(result: dict[str, Any]) -> list[float]:
    return [v for vs in result["lat"].values() for v in vs]


def side_by_side(lats: dict[str, dict[str, Any]]) -> str:
    """One row per measure, one column per store, and PostgreSQL ÷ SQLite when both ran."""
    names = list(lats)
    both = names == list(harness.BACKENDS)

    def row(label: str, get: Any, fmt: Any = harness.ms) -> list[str]:
        values = [get(lats[n]) for n in names]
        cells = [label, *(fmt(v) if v is not None else "—" for v in values)]
        if both:
            a, b = values
            cells.append(f"×{b / a:.2f}" if a and b is not None else "—")
        return cells

    def pct(phase: str, p: float, op: str | None = None) -> Any:
        def get(lat: dict[str, Any]) -> float:
            res = lat[phase]
            return harness.percentile(res["lat"][op] if op else _every(res), p)

        return get

    def count(phase: str) -> Any:
        return lambda lat: len(_every(lat[phase]))

    def timeouts(phase: str) -> Any:
        return lambda lat: sum(lat[phase]["timeouts"].values())

    def mutation(phase: str, p: float) -> Any:
        return lambda lat: harness.percentile(lat[phase]["mutation"], p)

    def cpu(name: str) -> Any:
        return lambda lat: lat["cpu"].get(name)

    integer = "{:,}".format
    share = "{:.0%}".format
    rows = [
        row("idle: changes measured", count("idle"), integer),
        row("idle: timeouts", timeouts("idle"), integer),
        row("idle: propagation p50", pct("idle", 50)),
        row("idle: propagation p99", pct("idle", 99)),
        row("idle: propagation max", pct("idle", 100)),
        row("loaded: background changes/s achieved", lambda lat: lat["bg_rate"], "{:.0f}".format),
        row("loaded: changes measured", count("loaded"), integer),
        row("loaded: timeouts", timeouts("loaded"), integer),
        row("loaded: propagation p50", pct("loaded", 50)),
        row("loaded: propagation p90", pct("loaded", 90)),
        row("loaded: propagation p99", pct("loaded", 99)),
        row("loaded: propagation max", pct("loaded", 100)),
        *(row(f"loaded: {op} p99", pct("loaded", 99, op)) for op in ("create", "update", "delete")),
        row("idle: mutation round trip p50", mutation("idle", 50)),
        row("loaded: mutation round trip p50", mutation("loaded", 50)),
        row("loaded: mutation round trip p99", mutation("loaded", 99)),
        row("loaded: control plane CPU", cpu("control"), share),
        row("loaded: PostgreSQL server CPU", cpu("postgresql (all its processes)"), share),
        *(row(f"loaded: gateway {c} CPU", cpu(f"gateway-{c}-0"), share) for c in CLUSTERS),
    ]
    columns = ["measure", *(harness.BACKEND_NAMES[n] for n in names)]
    if both:
        columns.append("PostgreSQL ÷ SQLite")
    return harness.table(columns, rows)


def latency_details(lat: dict[str, Any]) -> list[str]:
    """The full latency tables of one store (this bench's report before it had backends)."""
    report = [f"#### {harness.BACKEND_NAMES[lat['backend']]}: {lat['store']}\n"]
    idle, loaded = lat["idle"], lat["loaded"]
    report.append(
        "Latency = from the HTTP answer of the mutation until BOTH gateways enforce it "
        "(GET /v1/api-key polled back to back on both; "
        f"{loaded['polls'] / loaded['elapsed']:.0f} polls/s under load). "
        f"Background: target {BACKGROUND_RATE:.0f} changes/s "
        f"({BACKGROUND_THREADS} client threads, separate process, creates + name updates on "
        f"another team); achieved **{lat['bg_rate']:.0f} changes/s** during the measured "
        f"window" + (f", errors {lat['bg_errors']}" if lat["bg_errors"] else "") + ".\n"
    )
    rows = latency_rows("idle", idle) + latency_rows("under background load", loaded)
    report.append(
        harness.table(["phase", "change", "n", "timeouts", "p50", "p90", "p99", "max"], rows)
    )
    for label, res, want in (("idle", idle, IDLE_CHANGES), ("loaded", loaded, CHANGES)):
        if res["changes"] < want:
            report.append(
                f"\n{label} phase stopped at the {PHASE_SECONDS:.0f} s bound: "
                f"{res['changes']} of {want} changes measured."
            )
    mut = loaded["mutation"]
    report.append(
        f"\nMutation round trip itself (request → answer) under load: "
        f"p50 {harness.ms(harness.percentile(mut, 50))}, "
        f"p99 {harness.ms(harness.percentile(mut, 99))}; idle: "
        f"p50 {harness.ms(harness.percentile(idle['mutation'], 50))}, "
        f"p99 {harness.ms(harness.percentile(idle['mutation'], 99))}.\n"
    )
    report.append("CPU share per process during the loaded window (100 % = one core):\n")
    report.append(
        harness.table(
            ["process", "CPU", "RSS at end"],
            [
                [name, f"{share * 100:.0f} %", harness.mib(lat["rss"].get(name))]
                for name, share in lat["cpu"].items()
            ],
        )
    )
    return report


def main() -> None:
    backends = harness.backends_option("Propagation benchmark: SQLite and/or PostgreSQL")
    title = " vs ".join(harness.BACKEND_NAMES[b] for b in backends)
    report = [
        harness.header(f"Propagation (control plane + gateways us-east-1, eu-west-1; {title})")
    ]
    lats: dict[str, dict[str, Any]] = {}
    snap: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="keyplane-bench-propagation-") as d:
        tmp = Path(d)
        for backend in backends:
            if backend == "postgresql":
                harness.log("postgresql: starting a throwaway server ...")
                with harness.ThrowawayPostgres() as pg:
                    lats[backend] = latency_phase(tmp, backend, pg)
            else:
                lats[backend] = latency_phase(tmp, backend)
        if SNAPSHOT_KEYS > 0:
            snap = snapshot_phase(tmp)

    report.append(
        "Propagation latency = from the HTTP answer of a mutation until BOTH gateways enforce it. "
        f"Per store: up to {IDLE_CHANGES} changes idle, then up to {CHANGES} changes while a "
        f"separate process drives {BACKGROUND_RATE:.0f} other changes/s; each phase bounded at "
        f"{PHASE_SECONDS:.0f} s. Stores: "
        + "; ".join(f"{harness.BACKEND_NAMES[n]}: {lat['store']}" for n, lat in lats.items())
        + ".\n"
    )
    report.append(side_by_side(lats))
    rates = [lat["bg_rate"] for lat in lats.values()]
    if len(rates) == 2 and min(rates) < 0.85 * max(rates):
        report.append(
            f"\n**The loaded rows compare different loads**: the background reached "
            f"{rates[0]:.0f} changes/s on SQLite but {rates[1]:.0f} on PostgreSQL (target "
            f"{BACKGROUND_RATE:.0f}; the control plane saturates below it). For one load on both, "
            f"rerun with BENCH_BACKGROUND_RATE={int(min(rates) * 0.9)} or lower."
        )
    for lat in lats.values():
        report.append("")
        report += latency_details(lat)
    if snap is None:
        report.append(harness.footer())
        print("\n".join(report), flush=True)
        return
    report.append(
        f"\n**Snapshot and restart, {SNAPSHOT_KEYS:,} keys** (revision {snap['revision']:,}; "
        "control plane on SQLite)\n"
    )
    report.append(
        harness.table(
            ["measure", "value"],
            [
                ["fresh gateway: spawn → port answers /healthz", f"{snap['fresh_port_s']:.2f} s"],
                [
                    "fresh gateway: spawn → /healthz revision == current",
                    f"**{snap['fresh_synced_s']:.2f} s**",
                ],
                ["fresh gateway RSS, right after sync", harness.mib(snap["fresh_rss"])],
                ["fresh gateway RSS, 2 s later", harness.mib(snap["fresh_rss_2s"])],
                ["gateway replica on disk (replica.db + WAL)", f"{snap['replica_mib']:.0f} MiB"],
                [
                    "restart on local replica: spawn → /healthz answers",
                    f"{snap['restart_port_s']:.2f} s",
                ],
                [
                    "restart on local replica: spawn → a key authenticates (serves)",
                    f"**{snap['restart_serves_s']:.2f} s**",
                ],
                [
                    "restart: spawn → synced at current revision",
                    f"{snap['restart_synced_s']:.2f} s",
                ],
                ["restarted gateway RSS", harness.mib(snap["restart_rss"])],
                ["control plane RSS before the snapshot", harness.mib(snap["control_rss_before"])],
                ["control plane RSS peak while serving it", harness.mib(snap["control_rss_peak"])],
                ["control plane RSS after", harness.mib(snap["control_rss_after"])],
                ["(in-process load of the keys, bench setup)", f"{snap['populate_s']:.1f} s"],
            ],
        )
    )
    report.append(harness.footer())
    print("\n".join(report), flush=True)


if __name__ == "__main__":
    harness.stop_servers_on_sigterm()
    main()
