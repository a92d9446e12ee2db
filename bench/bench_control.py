"""Control-plane benchmark, against a real ``keyplane serve control`` process over HTTP, on SQLite
and on PostgreSQL (a throwaway server the bench starts with initdb on a free loopback port, and
stops at the end), with the same measurements on each:

(a) sustained CreateApiKey throughput with 8 concurrent clients (8 threads, one keep-alive
    httpx2.Client each), for CREATES creates or CREATE_SECONDS, whichever comes first;
(b) ListApiKeys latency, pageSize=100, on a team holding 100,000 keys (loaded in-process before
    the server starts): the first page again and again, and a walk with paginationToken;
(c) the server's RSS (VmRSS) idle after start, after the list runs, and after the creates.

Stores: SQLite runs with keyplane's default synchronous=NORMAL (WAL: commits survive a crash of
the process), and the bench turns PostgreSQL's fsync back on (the test helper starts it with
fsync=off; BENCH_PG_FSYNC=off keeps it off). After the bulk load PostgreSQL gets a VACUUM
ANALYZE, as autovacuum would.

Prints a Markdown report on stdout (first a side-by-side table, then each backend's details);
progress on stderr. Run from the repository root:
``.venv/bin/python bench/bench_control.py [--backend sqlite|postgresql|both]`` (default both; or
BENCH_BACKENDS=sqlite|postgresql|both). BENCH_KEYS and BENCH_CREATES shrink the run."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as harness
import httpx2

KEYS = int(os.environ.get("BENCH_KEYS", "100000"))
CLIENTS = 8
CREATES = int(os.environ.get("BENCH_CREATES", "4000"))
CREATE_SECONDS = 15.0
FIRST_PAGE_REQUESTS = 300
WALK_MAX_PAGES = 1000  # a full walk of 100k keys at 100 a page
WALK_SECONDS = 60.0
PAGE_SIZE = 100
DEPTH_ROUNDS = 60


def bench_creates(url: str, team_id: str, secret: str, server_pid: int) -> dict[str, Any]:
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = 0.0

    def worker() -> None:
        nonlocal issued
        with harness.connect(url, secret) as client:
            while True:
                with lock:
                    if issued >= CREATES or time.perf_counter() >= deadline:
                        return
                    issued += 1
                    n = issued
                body = {
                    "name": f"bench create {n}",
                    "acls": ["api-key:endpoint:chat", "api-key:model:grok-4"],
                    "qps": 10,
                    "qpm": 600,
                }
                t0 = time.perf_counter()
                try:
                    r = client.post(f"/auth/teams/{team_id}/api-keys", json=body)
                    status = str(r.status_code)
                except httpx2.HTTPError as error:
                    status = type(error).__name__
                dt = time.perf_counter() - t0
                with lock:
                    if status == "200":
                        latencies.append(dt)
                    else:
                        errors[status] = errors.get(status, 0) + 1

    # warm-up: connection setup, first-request imports, SQLite page cache
    with harness.connect(url, secret) as client:
        for i in range(20):
            client.post(f"/auth/teams/{team_id}/api-keys", json={"name": f"warm {i}"})

    server_cpu0 = harness.cpu_seconds(server_pid)
    client_cpu0 = sum(os.times()[:2])
    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    start = time.perf_counter()
    deadline = start + CREATE_SECONDS
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {
        "ok": len(latencies),
        "errors": errors,
        "elapsed": elapsed,
        "rate": len(latencies) / elapsed,
        "p50": harness.percentile(latencies, 50),
        "p99": harness.percentile(latencies, 99),
        "max": max(latencies) if latencies else float("nan"),
        "server_cpu": harness.cpu_seconds(server_pid) - server_cpu0,
        "client_cpu": sum(os.times()[:2]) - client_cpu0,
    }


def bench_list(url: str, team_id: str, secret: str) -> dict[str, Any]:
    path = f"/auth/teams/{team_id}/api-keys"
    first: list[float] = []
    walk: list[float] = []
    walked_keys = 0
    with harness.connect(url, secret) as client:
        for _ in range(10):  # warm-up
            client.get(path, params={"pageSize": PAGE_SIZE}).raise_for_status()
        for _ in range(FIRST_PAGE_REQUESTS):
            t0 = time.perf_counter()
            r = client.get(path, params={"pageSize": PAGE_SIZE})
            first.append(time.perf_counter() - t0)
            r.raise_for_status()
        token: str | None = None
        depths: dict[int, str] = {}  # keys already listed → the token that continues from there
        started = time.perf_counter()
        complete = False
        while len(walk) < WALK_MAX_PAGES and time.perf_counter() - started < WALK_SECONDS:
            params: dict[str, str | int] = {"pageSize": PAGE_SIZE}
            if token:
                params["paginationToken"] = token
            t0 = time.perf_counter()
            r = client.get(path, params=params)
            walk.append(time.perf_counter() - t0)
            r.raise_for_status()
            body = r.json()
            walked_keys += len(body["apiKeys"])
            token = body.get("paginationToken")
            if not token:
                complete = True
                break
            depths[walked_keys] = token
        # The same page size at three depths, requests interleaved so machine noise hits all alike.
        probes: dict[int, str | None] = {0: None}
        for want in (KEYS // 2, KEYS - 2 * PAGE_SIZE):
            at = max((d for d in depths if d <= want), default=None)
            if at is not None:
                probes[at] = depths[at]
        by_depth: dict[int, list[float]] = {d: [] for d in probes}
        for _ in range(DEPTH_ROUNDS):
            for depth, tok in probes.items():
                params = {"pageSize": PAGE_SIZE}
                if tok:
                    params["paginationToken"] = tok
                t0 = time.perf_counter()
                r = client.get(path, params=params)
                by_depth[depth].append(time.perf_counter() - t0)
                r.raise_for_status()
    tenth = max(1, len(walk) // 10)
    return {
        "first": first,
        "walk": walk,
        "walk_head": walk[:tenth],
        "walk_tail": walk[-tenth:],
        "walked_keys": walked_keys,
        "complete": complete,
        "by_depth": by_depth,
    }


def bench_list_all(url: str, team_id: str, secret: str) -> tuple[float, int, int]:
    """One ListApiKeys without pageSize (the contract's "absent → all"): seconds, keys, bytes."""
    with httpx2.Client(
        base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=120.0
    ) as client:
        t0 = time.perf_counter()
        r = client.get(f"/auth/teams/{team_id}/api-keys")
        dt = time.perf_counter() - t0
        r.raise_for_status()
        return dt, len(r.json()["apiKeys"]), len(r.content)


def run_backend(backend: str, tmp: Path, pg: Any) -> dict[str, Any]:
    """Every measurement on one store: SQLite in ``tmp``, or a new database on ``pg``."""
    out: dict[str, Any] = {"backend": backend}
    if backend == "postgresql":
        url = pg.database("bench_control")
        dep = harness.Deployment(tmp / backend, top_config=f'database_url = "{url}"')
        out["store"] = pg.label()
    else:
        dep = harness.Deployment(tmp / backend)
        out["store"] = "SQLite (WAL, synchronous=NORMAL, the default)"
    try:
        big_team, big_secret = dep.create_team("bench-100k")
        create_team, create_secret = dep.create_team("bench-creates")
        harness.log(f"{backend}: populating {KEYS} keys in-process ...")
        out["loaded"] = harness.populate(dep, big_team, KEYS, progress=harness.log)
        harness.log(f"{backend}: populated in {out['loaded'].seconds:.1f}s")
        if backend == "postgresql":
            t0 = time.perf_counter()
            pg.execute("VACUUM ANALYZE", "bench_control")
            out["vacuum_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        control = dep.start_control()
        out["ready_s"] = time.perf_counter() - t0
        pid = harness.pid_of(control)
        time.sleep(1.0)
        out["rss_idle"] = harness.rss_kib(pid)

        harness.log(f"{backend}: list: first page and page walk ...")
        out["list"] = bench_list(dep.control_url, big_team, big_secret)
        out["rss_after_list"] = harness.rss_kib(pid)

        harness.log(f"{backend}: list: everything in one answer (no pageSize) ...")
        out["all"] = bench_list_all(dep.control_url, big_team, big_secret)
        out["rss_after_all"] = harness.rss_kib(pid)

        harness.log(
            f"{backend}: creates: {CLIENTS} clients, up to {CREATES} or {CREATE_SECONDS:.0f}s"
        )
        pg_cpu0 = pg.cpu_seconds() if pg is not None else 0.0
        out["creates"] = bench_creates(dep.control_url, create_team, create_secret, pid)
        if pg is not None:
            out["store_cpu"] = pg.cpu_seconds() - pg_cpu0
        out["rss_after_creates"] = harness.rss_kib(pid)
        if backend == "postgresql":
            size = pg.execute("SELECT pg_database_size('bench_control')")
            out["db_mib"] = int(size) / (1 << 20)
            out["db_what"] = "pg_database_size"
        else:
            out["db_mib"] = sum(
                p.stat().st_size for p in dep.data_dir.glob("keyplane.db*") if p.exists()
            ) / (1 << 20)
            out["db_what"] = "keyplane.db + WAL"
    finally:
        dep.stop_all()
    return out


def _ratio(a: float, b: float) -> str:
    if not a or a != a or b != b:
        return "n/a"
    return f"×{b / a:.2f}"


def side_by_side(results: dict[str, dict[str, Any]]) -> str:
    """One row per measure, one column per store, and PostgreSQL ÷ SQLite when both ran."""
    names = list(results)
    both = names == list(harness.BACKENDS)

    def row(label: str, get: Any, fmt: Any) -> list[str]:
        values = [get(results[n]) for n in names]
        cells = [label, *(fmt(v) if v is not None else "—" for v in values)]
        if both:
            cells.append(_ratio(values[0], values[1]) if None not in values else "—")
        return cells

    def pct(name: str, p: float) -> Any:
        return lambda r: harness.percentile(r["list"][name], p)

    def deepest(r: dict[str, Any]) -> list[float]:
        by_depth = r["list"]["by_depth"]
        return list(by_depth[max(by_depth)])

    def rss(key: str) -> Any:
        return lambda r: r[key]

    def per_create_ms(r: dict[str, Any]) -> float:
        return float(r["creates"]["server_cpu"] / max(1, r["creates"]["ok"]))

    def store_per_create(r: dict[str, Any]) -> float | None:
        if "store_cpu" not in r:
            return None  # SQLite runs inside the control plane: counted in the row above
        return float(r["store_cpu"] / max(1, r["creates"]["ok"]))

    rate = "{:,.0f}".format
    secs = "{:.1f} s".format
    rows = [
        row("(a) creates/s, 8 concurrent clients", lambda r: r["creates"]["rate"], rate),
        row("(a) create latency p50", lambda r: r["creates"]["p50"], harness.ms),
        row("(a) create latency p99", lambda r: r["creates"]["p99"], harness.ms),
        row("(a) control-plane CPU per create", per_create_ms, harness.ms),
        row("(a) PostgreSQL server CPU per create", store_per_create, harness.ms),
        row(f"(b) list first page p50 ({KEYS:,} keys)", pct("first", 50), harness.ms),
        row(f"(b) list first page p99 ({KEYS:,} keys)", pct("first", 99), harness.ms),
        row("(b) list page walk p50", pct("walk", 50), harness.ms),
        row("(b) list page walk p99", pct("walk", 99), harness.ms),
        row("(b) deepest page p50", lambda r: harness.percentile(deepest(r), 50), harness.ms),
        row("(b) deepest page p99", lambda r: harness.percentile(deepest(r), 99), harness.ms),
        row("(b) unpaged list of every key", lambda r: r["all"][0], harness.ms),
        row("(c) RSS idle, 1 s after start", rss("rss_idle"), harness.mib),
        row("(c) RSS after the paged list", rss("rss_after_list"), harness.mib),
        row("(c) RSS after the unpaged list", rss("rss_after_all"), harness.mib),
        row("(c) RSS after the creates", rss("rss_after_creates"), harness.mib),
        row("server ready after spawn", lambda r: r["ready_s"], "{:.2f} s".format),
        row("store size on disk after the run", lambda r: r["db_mib"], "{:.0f} MiB".format),
        row("(setup) in-process load of the keys", lambda r: r["loaded"].seconds, secs),
    ]
    columns = ["measure", *(harness.BACKEND_NAMES[n] for n in names)]
    if both:
        columns.append("PostgreSQL ÷ SQLite")
    return harness.table(columns, rows)


def details(res: dict[str, Any]) -> list[str]:
    """The full tables of one store (the report this bench printed before it had backends)."""
    report: list[str] = [f"#### {harness.BACKEND_NAMES[res['backend']]}: {res['store']}\n"]
    loaded, cr, lst = res["loaded"], res["creates"], res["list"]
    all_s, all_keys, all_bytes = res["all"]
    vacuum = f", VACUUM ANALYZE {res['vacuum_s']:.1f} s" if "vacuum_s" in res else ""
    report.append(
        f"Store: {KEYS:,} keys in one team, loaded in-process in {loaded.seconds:.1f} s "
        f"(batched, mirroring create_key's rows{vacuum}); database {res['db_mib']:.0f} MiB after "
        f"the run ({res['db_what']}). Server ready {res['ready_s']:.2f} s after spawn.\n"
    )
    errors = cr["errors"] or {}
    report.append("**(a) CreateApiKey, sustained, 8 concurrent HTTP clients**\n")
    report.append(
        harness.table(
            [
                "creates",
                "errors",
                "wall",
                "creates/s",
                "p50",
                "p99",
                "max",
                "server CPU",
                "bench CPU",
            ],
            [
                [
                    cr["ok"],
                    sum(errors.values()) if errors else 0,
                    f"{cr['elapsed']:.1f} s",
                    f"{cr['rate']:.0f}",
                    harness.ms(cr["p50"]),
                    harness.ms(cr["p99"]),
                    harness.ms(cr["max"]),
                    f"{cr['server_cpu']:.1f} s ({cr['server_cpu'] / cr['elapsed'] * 100:.0f} %)",
                    f"{cr['client_cpu']:.1f} s",
                ]
            ],
        )
    )
    if errors:
        report.append(f"\nerrors by status: {errors}")
    if "store_cpu" in res:
        report.append(
            f"\nPostgreSQL's own processes meanwhile: {res['store_cpu']:.1f} s CPU "
            f"({res['store_cpu'] / cr['elapsed'] * 100:.0f} % of one core)."
        )
    first, walk = lst["first"], lst["walk"]
    report.append(f"\n**(b) ListApiKeys, pageSize={PAGE_SIZE}, team of {KEYS:,} keys**\n")
    rows = [
        [
            "first page (no token)",
            len(first),
            harness.ms(harness.percentile(first, 50)),
            harness.ms(harness.percentile(first, 99)),
            harness.ms(max(first)),
        ],
        [
            "walk with paginationToken"
            + (" (complete)" if lst["complete"] else f" ({lst['walked_keys']:,} keys, cut)"),
            len(walk),
            harness.ms(harness.percentile(walk, 50)),
            harness.ms(harness.percentile(walk, 99)),
            harness.ms(max(walk)),
        ],
        [
            "  walk, first 10 % of pages",
            len(lst["walk_head"]),
            harness.ms(harness.percentile(lst["walk_head"], 50)),
            harness.ms(harness.percentile(lst["walk_head"], 99)),
            harness.ms(max(lst["walk_head"])),
        ],
        [
            "  walk, last 10 % of pages",
            len(lst["walk_tail"]),
            harness.ms(harness.percentile(lst["walk_tail"], 50)),
            harness.ms(harness.percentile(lst["walk_tail"], 99)),
            harness.ms(max(lst["walk_tail"])),
        ],
        *[
            [
                f"page after {depth:,} keys (interleaved A/B)",
                len(values),
                harness.ms(harness.percentile(values, 50)),
                harness.ms(harness.percentile(values, 99)),
                harness.ms(max(values)),
            ]
            for depth, values in lst["by_depth"].items()
        ],
        [
            f"no pageSize (all {all_keys:,} keys, {all_bytes / (1 << 20):.0f} MiB)",
            1,
            harness.ms(all_s),
            "",
            "",
        ],
    ]
    report.append(harness.table(["request", "n", "p50", "p99", "max"], rows))
    report.append("\n**(c) Control-plane RSS (VmRSS)**\n")
    report.append(
        harness.table(
            ["moment", "RSS"],
            [
                [f"idle, 1 s after start ({KEYS:,} keys in store)", harness.mib(res["rss_idle"])],
                ["after the paged list runs", harness.mib(res["rss_after_list"])],
                ["after one unpaged list of all keys", harness.mib(res["rss_after_all"])],
                [f"after {cr['ok']} creates", harness.mib(res["rss_after_creates"])],
            ],
        )
    )
    return report


def main() -> None:
    backends = harness.backends_option("Control-plane benchmark: SQLite and/or PostgreSQL")
    title = " vs ".join(harness.BACKEND_NAMES[b] for b in backends)
    report: list[str] = [harness.header(f"Control plane (keyplane serve control, {title})")]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="keyplane-bench-control-") as tmp:
        for backend in backends:
            if backend == "postgresql":
                harness.log("postgresql: starting a throwaway server ...")
                with harness.ThrowawayPostgres() as pg:
                    results[backend] = run_backend(backend, Path(tmp), pg)
            else:
                results[backend] = run_backend(backend, Path(tmp), None)

    report.append(
        f"Same runs on each store, one after the other: {KEYS:,} keys loaded in-process into one "
        f"team, then (b) ListApiKeys pageSize={PAGE_SIZE} ({FIRST_PAGE_REQUESTS} first pages, a "
        f"walk of up to {WALK_MAX_PAGES} pages, {DEPTH_ROUNDS} interleaved rounds at 3 depths), "
        f"then (a) creates from {CLIENTS} clients (up to {CREATES:,} or "
        f"{CREATE_SECONDS:.0f} s). Stores: "
        + "; ".join(f"{harness.BACKEND_NAMES[n]}: {r['store']}" for n, r in results.items())
        + ". The control plane and the store share this machine's cores with the load "
        "generator.\n"
    )
    report.append(side_by_side(results))
    for res in results.values():
        report.append("")
        report += details(res)
    report.append(harness.footer())
    print("\n".join(report), flush=True)


if __name__ == "__main__":
    harness.stop_servers_on_sigterm()
    main()
