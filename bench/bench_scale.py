"""Scale benchmark (#17): what a million keys cost, against 100,000 (gateway) and 10,000 (paths).

Keys are bulk-loaded through the store layer (``keyplane.storage.bulk``: one team, COPY or
executemany, no HTTP, no change log: as if it had been compacted after the load), with progress on
stderr. Then:

* **gateway** (SQLite control plane, one cluster), at each of GATEWAY_KEYS: a fresh gateway's
  spawn → /healthz at the current revision, its RSS and bytes per key, the replica file's size;
  a restart on that replica: spawn → a key authenticates; the snapshot itself fetched once more
  by the bench (bytes per key on the wire, time, and the control plane's RSS peak above its
  idle RSS while serving it).
* **control-plane paths** (in-process app over the ASGI transport, SQLite and PostgreSQL), at each
  of PATH_KEYS, one app per store, all open at once and driven in interleaved rounds (so machine
  load falls on every size alike): create, update, delete, list page (pageSize 100: first, deep,
  with a common and a rare aclFilter), propagation status and a usage query; per path and size
  the wall p50/p99, the CPU per request in process (``time.process_time``) and its median's ratio
  between sizes, on PostgreSQL the server's CPU per request, and each request's query plans
  (EXPLAIN QUERY PLAN / EXPLAIN), flagged where they scan a table.

Every phase is bounded (the paths by PATH_SECONDS per path, the load by LOAD_SECONDS). Run from
the repository root: ``.venv/bin/python bench/bench_scale.py [--backend sqlite|postgresql|both]``;
BENCH_SCALE_GATEWAY_KEYS, BENCH_SCALE_PATH_KEYS and BENCH_SCALE_CPU_KEYS (comma-separated counts,
empty: skip the phase) shrink it. BENCH_SCALE_PATH_STORES=<dir> keeps the paths phase's stores
(and its PostgreSQL data directory) there and reuses them on the next run: a million keys load once.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as harness
import httpx2

from keyplane.propagation.wire import SEED_PATH, SNAPSHOT_PATH


def _counts(name: str, default: str) -> list[int]:
    return [int(n) for n in os.environ.get(name, default).split(",") if n.strip()]


GATEWAY_KEYS = _counts("BENCH_SCALE_GATEWAY_KEYS", "100000,1000000")
PATH_KEYS = _counts("BENCH_SCALE_PATH_KEYS", "10000,1000000")
CPU_KEYS = _counts("BENCH_SCALE_CPU_KEYS", "100000")
LOAD_SECONDS = float(os.environ.get("BENCH_SCALE_LOAD_SECONDS", "900"))
#: The paths phase: up to PATH_REQUESTS per path and store, PATH_SECONDS per path in all.
PATH_REQUESTS = int(os.environ.get("BENCH_SCALE_PATH_REQUESTS", "400"))
PATH_SECONDS = float(os.environ.get("BENCH_SCALE_PATH_SECONDS", "40"))
PATH_BATCH = 5
CLUSTER = "us-east-1"
#: Requests of each kind timed while the seed builds (and as many after), within SAMPLE_SECONDS.
SAMPLE_REQUESTS = int(os.environ.get("BENCH_SCALE_SAMPLE_REQUESTS", "300"))
SAMPLE_SECONDS = float(os.environ.get("BENCH_SCALE_SAMPLE_SECONDS", "120"))
RARE_EVERY = 1000  # one key in a thousand holds the rare ACL


def load(dep: harness.Deployment, team: str, count: int) -> Any:
    harness.log(f"loading {count:,} keys ...")
    loaded = harness.populate(
        dep,
        team,
        count,
        batch=20_000,
        change_log=False,
        audit=False,
        rare_every=RARE_EVERY,
        progress=harness.log,
        time_limit=LOAD_SECONDS,
    )
    harness.log(f"loaded {count:,} keys in {loaded.seconds:.1f} s")
    return loaded


def _peak_rss(pid: int, until: threading.Event, into: list[int]) -> None:
    while not until.is_set():
        into[0] = max(into[0], harness.rss_kib(pid) or 0)
        until.wait(0.02)


@contextmanager
def watching(pid: int) -> Iterator[list[int]]:
    """The peak RSS (KiB) of ``pid`` while the block runs, sampled every 20 ms."""
    peak = [0]
    done = threading.Event()
    watcher = threading.Thread(target=_peak_rss, args=(pid, done, peak), daemon=True)
    watcher.start()
    try:
        yield peak
    finally:
        done.set()
        watcher.join()


def wait_synced(url: str, revision: int, timeout: float) -> None:
    def ok() -> bool:
        try:
            got = httpx2.get(url + "/healthz", headers=harness.OPERATOR)
        except httpx2.HTTPError:
            return False
        return got.status_code == 200 and int(got.json().get("revision", -1)) >= revision

    harness.wait_for(ok, timeout=timeout, what=f"gateway at revision {revision}")


def snapshot_on_the_wire(
    dep: harness.Deployment, control_pid: int, path: str = SNAPSHOT_PATH
) -> dict[str, Any]:
    """Fetch the snapshot as a gateway does (``format=rows``), or the seed file (``SEED_PATH``);
    bytes, seconds, the control plane's RSS peak."""
    from keyplane.propagation import feed
    from keyplane.propagation.wire import GATEWAY_HEADER, ROWS
    from keyplane.runtime import open_context

    ctx = open_context(dep.settings())
    try:
        credential = feed.issue_credential(ctx, cluster=CLUSTER)
    finally:
        ctx.db.dispose()
    headers = {
        "Authorization": f"Bearer {credential}",
        GATEWAY_HEADER: f"{CLUSTER}/bench-{path.rsplit('/', 1)[-1]}",
    }
    size = lines = 0
    idle = harness.rss_kib(control_pid) or 0
    started = time.perf_counter()
    with (
        watching(control_pid) as peak,
        httpx2.stream(
            "GET",
            dep.control_url + path,
            params={"format": ROWS} if path == SNAPSHOT_PATH else {},
            headers=headers,
            timeout=600,
        ) as response,
    ):
        assert response.status_code == 200, response.read()
        for chunk in response.iter_raw():
            size += len(chunk)
            lines += chunk.count(b"\n")
    return {
        "bytes": size,
        "lines": lines,
        "seconds": time.perf_counter() - started,
        "control_idle": idle,
        "control_peak": peak[0],
    }


def _logged(proc: harness.Proc, event: str) -> dict[str, Any]:
    """The last ``event`` line of ``proc``'s JSON log."""
    import json

    lines = proc.log_path.read_text(errors="replace").splitlines()
    found = [json.loads(x) for x in lines if x.startswith("{") and f'"{event}"' in x]
    assert found, f"no {event} in {proc.name}'s log"
    last: dict[str, Any] = found[-1]
    return last


def sample_paths(
    dep: harness.Deployment,
    team: str,
    mgmt: str,
    until: Callable[[], bool] | None,
    count: int = SAMPLE_REQUESTS,
) -> dict[str, list[float]]:
    """Wall times of create and list-page requests in turn: while ``until`` is false (a seed
    builds), up to ``count`` of each; bounded by SAMPLE_SECONDS."""
    times: dict[str, list[float]] = {"create": [], "list": []}
    deadline = time.monotonic() + SAMPLE_SECONDS
    with harness.connect(dep.control_url, mgmt) as client:
        while time.monotonic() < deadline and len(times["create"]) < count:
            if until is not None and until():
                break
            t0 = time.perf_counter()
            made = client.post(f"/auth/teams/{team}/api-keys", json={"name": "during"})
            times["create"].append(time.perf_counter() - t0)
            assert made.status_code == 200, made.text
            t0 = time.perf_counter()
            page = client.get(f"/auth/teams/{team}/api-keys", params={"pageSize": 100})
            times["list"].append(time.perf_counter() - t0)
            assert page.status_code == 200, page.text
    return times


def _stores() -> dict[int, Path]:
    """BENCH_SCALE_STORES=<keys>=<dir>,...: deployments already loaded (their data/keyplane.db
    and samples.json, as ``load`` leaves them), reused instead of loading the keys again."""
    pairs = (item.split("=", 1) for item in os.environ.get("BENCH_SCALE_STORES", "").split(","))
    return {int(n): Path(d) for n, d in (p for p in pairs if len(p) == 2)}


def _keys_for(dep: harness.Deployment, count: int) -> tuple[list[tuple[str, str]], float]:
    """The store of ``count`` keys in ``dep`` (bulk-loaded, or copied from BENCH_SCALE_STORES):
    sample keys (id, secret) and the load's seconds (0 when copied)."""
    import json
    import shutil

    prebuilt = _stores().get(count)
    if prebuilt is None:
        team, _secret = dep.create_team("scale")
        loaded = load(dep, team, count)
        return list(loaded.samples), loaded.seconds
    shutil.copyfile(prebuilt / "data" / "keyplane.db", dep.data_dir / "keyplane.db")
    # Its deployment secret too (beside the data directory): the store records which it was.
    shutil.copyfile(prebuilt / "data.secret", Path(f"{dep.data_dir}.secret"))
    samples = json.loads((prebuilt / "samples.json").read_text())["samples"]
    return [(key_id, secret) for key_id, secret in samples], 0.0


def gateway_phase(tmp: Path, count: int) -> dict[str, Any]:
    dep = harness.Deployment(tmp / f"gateway-{count}", clusters=[CLUSTER])
    out: dict[str, Any] = {"keys": count}
    try:
        samples, out["load_s"] = _keys_for(dep, count)
        key_id, secret = samples[0]
        control = dep.control().start(timeout=600)  # a million keys' store, on a loaded machine
        control_pid = harness.pid_of(control)
        # The seed file builds in the background from start: requests meanwhile, then after.
        team, mgmt = dep.create_team("bench")

        def seeded() -> bool:
            return '"seed_built"' in control.log_path.read_text(errors="replace")

        out["paths_building"] = sample_paths(dep, team, mgmt, seeded)
        harness.wait_for(seeded, timeout=900, what="the control plane serving its seed file")
        out["seed"] = _logged(control, "seed_built")
        during = len(out["paths_building"]["create"])
        out["paths_idle"] = sample_paths(dep, team, mgmt, None, max(during, 20))
        revision = harness.current_revision(dep)
        out["catch_up_changes"] = revision - out["seed"]["revision"]
        out["control_idle"] = harness.rss_kib(control_pid)
        me = {"Authorization": f"Bearer {secret}"}

        harness.log(f"{count:,}: fresh gateway ...")
        gw = dep.gateway(CLUSTER)
        with watching(control_pid) as peak:
            control_cpu = harness.cpu_seconds(control_pid)
            t0 = time.perf_counter()
            gw.start(timeout=120)
            out["fresh_port_s"] = time.perf_counter() - t0
            gateway_cpu = harness.cpu_seconds(harness.pid_of(gw))
            wait_synced(gw.url, revision, timeout=900)
            out["fresh_synced_s"] = time.perf_counter() - t0
            # CPU each side spent on the snapshot (the gateway's from its open port on: not its
            # imports), so the machine's load does not hide what the sync costs.
            out["sync_control_cpu"] = harness.cpu_seconds(control_pid) - control_cpu
            out["sync_gateway_cpu"] = harness.cpu_seconds(harness.pid_of(gw)) - gateway_cpu
        out["control_peak_fresh"] = peak[0]
        out["fresh_seed"] = _logged(gw, "snapshot_applied")
        answer = httpx2.get(gw.url + "/v1/api-key", headers=me)
        assert answer.status_code == 200, answer.text
        assert answer.json()["api_key_id"] == key_id, answer.text
        gpid = harness.pid_of(gw)
        out["fresh_rss"] = harness.rss_kib(gpid)
        time.sleep(2.0)  # what stays resident once the sync's garbage is gone
        out["fresh_rss_2s"] = harness.rss_kib(gpid)
        replica = dep.data_dir / "gateways" / CLUSTER
        out["replica_bytes"] = sum(p.stat().st_size for p in replica.glob("replica.db*"))

        harness.log(f"{count:,}: restart on the replica ...")
        gw.stop()
        again = dep.gateway(CLUSTER)
        t0 = time.perf_counter()
        again.start(timeout=120)
        out["restart_port_s"] = time.perf_counter() - t0
        answer = httpx2.get(again.url + "/v1/api-key", headers=me)
        out["restart_serves_s"] = time.perf_counter() - t0
        out["restart_cpu"] = harness.cpu_seconds(harness.pid_of(again))
        assert answer.status_code == 200, answer.text
        wait_synced(again.url, revision, timeout=120)
        out["restart_synced_s"] = time.perf_counter() - t0
        out["restart_rss"] = harness.rss_kib(harness.pid_of(again))

        harness.log(f"{count:,}: the snapshot on the wire ...")
        out["wire"] = snapshot_on_the_wire(dep, control_pid)
        out["seed_wire"] = snapshot_on_the_wire(dep, control_pid, SEED_PATH)
    finally:
        dep.stop_all()
    return out


# -- the snapshot's CPU on each side, and a lookup, in process -----------------------------------


def cpu_phase(tmp: Path, count: int) -> dict[str, Any]:
    """CPU seconds (this process, ``time.process_time``) the control plane spends producing a
    snapshot of ``count`` keys as it sends them, and a gateway storing them, each alone; and a
    lookup's cost through the cache and past it. Under a shared machine's load, wall times
    mislead; these do not."""
    from keyplane.gateway.replica import Replica, ReplicaStore
    from keyplane.propagation import feed
    from keyplane.runtime import open_context

    dep = harness.Deployment(tmp / f"cpu-{count}", clusters=[CLUSTER])
    samples, _seconds = _keys_for(dep, count)
    ctx = open_context(dep.settings())
    out: dict[str, Any] = {"keys": count}
    try:
        lines: list[bytes] = []
        t0 = time.process_time()
        for item in feed.snapshot_json(ctx):  # as the route sends format=rows
            if not isinstance(item, int):
                lines += "\n".join(item).encode().split(b"\n")
        out["produce_cpu"] = time.process_time() - t0
        out["row_bytes"] = sum(len(x) + 1 for x in lines) / len(lines)
    finally:
        ctx.db.dispose()
    store = ReplicaStore(tmp / f"cpu-{count}" / "replica.db")
    t0 = time.process_time()
    staged = store.stage(fresh=True)
    staged.part(1)
    for start in range(0, len(lines), 5000):
        staged.add(lines[start : start + 5000])
    staged.finish()
    out["store_cpu"] = time.process_time() - t0
    del lines
    replica = Replica()
    store.load_into(replica)
    from keyplane.domain import keysecrets

    digests = [keysecrets.digest_raw(secret.encode()) for _, secret in samples]
    rounds = 2000
    walls: list[float] = []
    t0 = time.process_time()
    for i in range(rounds):
        replica._forget_all()  # a miss each time: one point query and a decode
        w0 = time.perf_counter()
        replica.lookup(digests[i % len(digests)], 0.0)
        walls.append(time.perf_counter() - w0)
    out["miss_us"] = (time.process_time() - t0) / rounds * 1e6
    walls.sort()  # what a miss holds the event loop for, under the machine's load
    out["miss_wall_us"] = (walls[rounds // 2] * 1e6, walls[rounds * 99 // 100] * 1e6)
    t0 = time.process_time()
    for i in range(rounds * 50):
        replica.lookup(digests[i % len(digests)], 0.0)
    out["hit_us"] = (time.process_time() - t0) / (rounds * 50) * 1e6
    store.close()
    return out


def cpu_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        n = r["keys"]
        rows.append(
            [
                f"{n:,}",
                f"{r['produce_cpu']:.1f} s ({r['produce_cpu'] / n * 1e6:.1f} µs/key)",
                f"{r['store_cpu']:.1f} s ({r['store_cpu'] / n * 1e6:.1f} µs/key)",
                f"{r['row_bytes']:.0f} B",
                f"{r['miss_us']:.1f} µs (wall p50 {r['miss_wall_us'][0]:.0f} µs,"
                f" p99 {r['miss_wall_us'][1]:.0f} µs)",
                f"{r['hit_us']:.2f} µs",
            ]
        )
    columns = [
        "keys",
        "control plane CPU: snapshot rows",
        "gateway CPU: store and swap in",
        "row on the wire",
        "lookup past the cache",
        "lookup in the cache",
    ]
    return harness.table(columns, rows)


# -- control-plane paths, in process --------------------------------------------------------------

_SCAN = re.compile(r"\bSCAN (?!.*USING (?:COVERING )?INDEX)(\w+)|Seq Scan on (\w+)")


class Statements:
    """The SQL each request runs (captured from the engines), to EXPLAIN afterwards."""

    def __init__(self) -> None:
        self.current: list[tuple[str, Any]] | None = None

    def attach(self, engine: Any) -> None:
        from sqlalchemy import event

        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
        if self.current is not None and not many:
            self.current.append((sql, params))

    @contextmanager
    def capture(self) -> Iterator[list[tuple[str, Any]]]:
        self.current = []
        try:
            yield self.current
        finally:
            self.current = None


def explain(db: Any, statements: list[tuple[str, Any]]) -> list[str]:
    """Each distinct SELECT/UPDATE/DELETE's plan, one line per plan node."""
    seen: set[str] = set()
    out: list[str] = []
    for sql, params in statements:
        verb = sql.lstrip().split(None, 1)[0].upper()
        if verb not in ("SELECT", "UPDATE", "DELETE", "INSERT") or sql in seen:
            continue
        if verb == "INSERT" and "SELECT" not in sql.upper():
            continue
        seen.add(sql)
        prefix = "EXPLAIN QUERY PLAN " if db.is_sqlite else "EXPLAIN "
        with db.read() as conn:
            rows = conn.exec_driver_sql(prefix + sql, params).fetchall()
        plan = [str(r[-1]) if db.is_sqlite else str(r[0]) for r in rows]
        out.append(" ".join(sql.split())[:160])
        out += [f"    {line}" for line in plan]
    return out


def scans(plan: list[str]) -> list[str]:
    """Tables a plan reads whole (SQLite ``SCAN t`` without an index, PostgreSQL ``Seq Scan``)."""
    found = []
    for line in plan:
        if line.startswith("    "):
            m = _SCAN.search(line)
            if m and not (m.group(1) or m.group(2)).startswith("anon_"):  # a subquery's rows
                found.append(m.group(1) or m.group(2))
    return found


class KeptPostgres(harness.ThrowawayPostgres):
    """The bench's PostgreSQL, its data directory kept in ``keep`` (BENCH_SCALE_PATH_STORES) so a
    million keys are loaded once for several runs; without ``keep``, a throwaway one."""

    def __init__(self, keep: Path | None) -> None:
        self.keep = keep

    def __enter__(self) -> Any:
        if self.keep is None:
            return super().__enter__()
        import shutil

        bindir = harness.postgres_bindir()
        if bindir is None:
            raise SystemExit("PostgreSQL's initdb was not found (apt-get install -y postgresql)")
        self.fsync = os.environ.get("BENCH_PG_FSYNC", "on") != "off"
        server = harness._postgres_server(bindir, fsync=self.fsync)
        shutil.rmtree(server.root, ignore_errors=True)
        server.root = self.keep / "pg"
        server.data = server.root / "data"
        self.server = server
        if server.data.exists():
            server._launch(60.0)
        else:
            server.root.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(server.root, "postgres", "postgres")
            server.start()
        self.version = str(self.execute("SHOW server_version")).split()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.keep is None:
            super().__exit__(*exc)
            return
        proc = self.server._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)

    def database(self, name: str) -> str:
        found = f"SELECT 1 FROM pg_database WHERE datname = '{name}'"  # noqa: S608 - our names
        exists = self.execute(found)
        return self.server.url(name) if exists else super().database(name)


def path_store(tmp: Path, backend: str, count: int, pg: Any) -> tuple[Any, str, str]:
    """A store of ``count`` keys in one team: (deployment, team, management secret). Under
    BENCH_SCALE_PATH_STORES it is kept and reused by later runs (the bench's own few keys
    aside)."""
    import json

    keep = os.environ.get("BENCH_SCALE_PATH_STORES")
    root = (Path(keep) if keep else tmp) / f"paths-{backend}-{count}"
    top = f'database_url = "{pg.database(f"paths{count}")}"' if backend == "postgresql" else ""
    dep = harness.Deployment(root, clusters=[CLUSTER], top_config=top)
    made = root / "store.json"
    if made.exists():
        team, secret = json.loads(made.read_text())
        harness.log(f"{backend} {count:,}: reusing the store in {root}")
        return dep, team, secret
    team, secret = dep.create_team("scale")
    load(dep, team, count)
    if backend == "postgresql":
        pg.execute("VACUUM ANALYZE", database=f"paths{count}")
    made.write_text(json.dumps([team, secret]))
    return dep, team, secret


USAGE_BODY = {
    "analyticsRequest": {
        "timeRange": {
            "startTime": "2026-11-01 00:00:00",
            "endTime": "2026-12-01 00:00:00",
            "timezone": "Etc/GMT",
        },
        "timeUnit": "TIME_UNIT_DAY",
        "values": [{"name": "usd", "aggregation": "AGGREGATION_SUM"}],
        "groupBy": ["api_key_id"],
    }
}


class PathsApp:
    """One store's in-process control plane and the bench's requests against it."""

    def __init__(self, tmp: Path, backend: str, count: int, pg: Any) -> None:
        from starlette.testclient import TestClient

        from keyplane.control.app import create_app
        from keyplane.propagation.notifier import ChangeNotifier
        from keyplane.runtime import open_context

        self.count = count
        dep, self.team, secret = path_store(tmp, backend, count, pg)
        settings = dep.settings()
        notifier = ChangeNotifier()
        self.ctx = open_context(settings, on_commit=notifier.notify)
        self.statements = Statements()
        self.statements.attach(self.ctx.db.reader)
        self.statements.attach(self.ctx.db.writer)
        app = create_app(settings, self.ctx, notifier)
        self.client = TestClient(app, headers={"Authorization": f"Bearer {secret}"})
        self.client.__enter__()
        self.keys_path = f"/auth/teams/{self.team}/api-keys"
        self.made: list[str] = []
        self.deep_token = _deep_token(self.ctx, self.team, count)
        self.create()  # the key update and propagation status read

    def close(self) -> None:
        try:
            self.client.__exit__(None, None, None)
        finally:
            self.ctx.db.dispose()

    def create(self) -> Any:
        body = {"name": "scale", "acls": ["api-key:model:*"], "qps": 5}
        answer = self.client.post(self.keys_path, json=body)
        self.made.append(answer.json()["apiKeyId"])
        return answer

    def update(self) -> Any:
        body = {"apiKey": {"qpm": 100 + len(self.made)}, "fieldMask": "qpm"}
        return self.client.put(f"/auth/api-keys/{self.made[-1]}", json=body)

    def delete(self) -> Any:
        if len(self.made) < 2:  # keep made[0] for the propagation status
            self.create()
        return self.client.delete(f"/auth/api-keys/{self.made.pop()}")

    def propagation(self) -> Any:
        return self.client.get(f"/auth/api-keys/{self.made[0]}/propagation")

    def page(self, **params: Any) -> Any:
        return self.client.get(self.keys_path, params={"pageSize": 100, **params})

    def usage(self) -> Any:
        return self.client.post(f"/v1/billing/teams/{self.team}/usage", json=USAGE_BODY)


#: (name, request) of every measured path, in the order of a round.
PATHS: list[tuple[str, Callable[[PathsApp], Any]]] = [
    ("create", PathsApp.create),
    ("update", PathsApp.update),
    ("propagation status", PathsApp.propagation),
    ("list: first page", lambda a: a.page()),
    ("list: deep page", lambda a: a.page(paginationToken=a.deep_token)),
    ("list: aclFilters common", lambda a: a.page(aclFilters="api-key:endpoint:chat")),
    ("list: aclFilters rare", lambda a: a.page(aclFilters="api-key:model:grok-rare")),
    # One key in RARE_EVERY holds it: 10 of 10,000 keys, so pageSize 100 answers 10 keys there and
    # 100 at a million; 10 a page answers as many keys at every size.
    (
        "list: aclFilters rare, pageSize 10",
        lambda a: a.page(aclFilters="api-key:model:grok-rare", pageSize=10),
    ),
    ("usage query (by key, 30 days)", PathsApp.usage),
    ("delete", PathsApp.delete),
]


def paths_phase(tmp: Path, backend: str, counts: list[int], pg: Any) -> list[dict[str, Any]]:
    """Every path against every store, interleaved: each round runs PATH_BATCH requests of each
    path on each store (the stores' order alternating between rounds), until PATH_REQUESTS per
    path and store or PATH_SECONDS per path in all. Per request: wall time and the process's CPU
    (``time.process_time``: the in-process app, its driver, SQLite itself); on PostgreSQL also
    the server's CPU per batch, per request."""
    apps = [PathsApp(tmp, backend, n, pg) for n in counts]
    out = [{"keys": a.count, "paths": {}} for a in apps]
    try:
        for app, result in zip(apps, out, strict=True):
            for name, call in PATHS:
                with app.statements.capture() as seen:
                    answer = call(app)
                assert answer.status_code == 200, (name, answer.status_code, answer.text)
                plan = explain(app.ctx.db, seen)
                result["paths"][name] = {
                    "wall": [],
                    "cpu": [],
                    "server_cpu": 0.0,
                    "plan": plan,
                    "scans": scans(plan),
                }
        deadline = time.perf_counter() + PATH_SECONDS * len(PATHS)
        rounds = 0
        harness.log(f"{backend}: interleaving {counts} for up to {PATH_SECONDS * len(PATHS):.0f} s")
        while time.perf_counter() < deadline:
            pending = False
            order = list(zip(apps, out, strict=True))
            if rounds % 2:
                order.reverse()
            for name, call in PATHS:
                for app, result in order:
                    p = result["paths"][name]
                    if len(p["wall"]) >= PATH_REQUESTS:
                        continue
                    pending = True
                    server0 = pg.cpu_seconds() if pg is not None else 0.0
                    for _ in range(PATH_BATCH):
                        c0, t0 = time.process_time(), time.perf_counter()
                        answer = call(app)
                        t1, c1 = time.perf_counter(), time.process_time()
                        assert answer.status_code == 200, (name, answer.text)
                        p["wall"].append(t1 - t0)
                        p["cpu"].append(c1 - c0)
                    if pg is not None:
                        p["server_cpu"] += pg.cpu_seconds() - server0
            rounds += 1
            if not pending:
                break
            if rounds % 10 == 0:
                harness.log(f"{backend}: round {rounds}")
        for result in out:
            result["rounds"] = rounds
            for p in result["paths"].values():
                walls, cpus = p.pop("wall"), p.pop("cpu")
                p["n"] = len(walls)
                p["p50"] = harness.percentile(walls, 50)
                p["p99"] = harness.percentile(walls, 99)
                p["cpu50"] = harness.percentile(cpus, 50)
                p["cpu_mean"] = sum(cpus) / max(len(cpus), 1)
                p["server_cpu"] /= max(len(walls), 1)
    finally:
        for app in apps:
            app.close()
    return out


def _deep_token(ctx: Any, team: str, count: int) -> str:
    """The page token ListApiKeys would give 200 keys before the end of the team's list."""
    import json

    from sqlalchemy import select

    from keyplane.domain.pagination import encode_token
    from keyplane.storage import tables

    k = tables.api_keys
    with ctx.db.read() as conn:
        row = conn.execute(
            select(k.c.create_time, k.c.api_key_id)
            .where(k.c.team_id == team)
            .order_by(k.c.create_time, k.c.api_key_id)
            .offset(max(count - 200, 0))
            .limit(1)
        ).one()
    scope = json.dumps(["api-keys", team, [], False, ""])
    return encode_token(ctx.server_secret, scope, [int(row.create_time), row.api_key_id])


# -- report ---------------------------------------------------------------------------------------


def _p50_p99(walls: list[float]) -> str:
    if not walls:
        return "n/a"
    p50, p99 = harness.percentile(walls, 50), harness.percentile(walls, 99)
    return f"{harness.ms(p50)} / {harness.ms(p99)} ({len(walls)})"


def gateway_table(results: list[dict[str, Any]]) -> str:
    def per_key(kib: int | None, keys: int) -> str:
        return "n/a" if kib is None else f"{kib * 1024 / keys:,.0f} B"

    rows: list[list[Any]] = []

    def row(label: str, get: Callable[[dict[str, Any]], Any]) -> None:
        rows.append([label, *(get(r) for r in results)])

    row("fresh gateway: spawn → port answers", lambda r: f"{r['fresh_port_s']:.2f} s")
    row("fresh gateway: spawn → current revision", lambda r: f"**{r['fresh_synced_s']:.2f} s**")
    row(
        "seed file build (control plane, background): wall / CPU",
        lambda r: f"{r['seed']['seconds']:.1f} s / {r['seed']['cpu']:.1f} s",
    )
    row("… its size", lambda r: f"{r['seed']['bytes'] / (1 << 20):.0f} MiB")
    for path in ("create", "list"):
        row(
            f"{path} p50 / p99 while the seed builds (n)",
            lambda r, p=path: _p50_p99(r["paths_building"][p]),
        )
        row(f"{path} p50 / p99 after (n)", lambda r, p=path: _p50_p99(r["paths_idle"][p]))
    row("fresh gateway took", lambda r: r["fresh_seed"].get("source", "rows"))
    for label, name in (
        ("fresh gateway's seed: answered", "answered"),
        ("… downloaded and checked", "received"),
        ("… opened", "open"),
        ("… gateway CPU for it", "cpu"),
    ):
        row(label, lambda r, n=name: f"{r['fresh_seed'].get(n, 0):.2f} s")
    row("… changes caught up through the feed after it", lambda r: f"{r['catch_up_changes']:,}")
    row("fresh gateway RSS right after sync", lambda r: harness.mib(r["fresh_rss"]))
    row("fresh gateway RSS 2 s later", lambda r: harness.mib(r["fresh_rss_2s"]))
    row("… per key", lambda r: f"**{per_key(r['fresh_rss_2s'], r['keys'])}**")
    row("replica on disk (replica.db + WAL)", lambda r: f"{r['replica_bytes'] / (1 << 20):.0f} MiB")
    row("… per key", lambda r: f"{r['replica_bytes'] / r['keys']:,.0f} B")
    row(
        "… CPU: control plane / gateway, per key",
        lambda r: (
            f"{r['sync_control_cpu'] / r['keys'] * 1e6:.1f} / "
            f"{r['sync_gateway_cpu'] / r['keys'] * 1e6:.1f} µs"
        ),
    )
    row("restart: spawn → port answers", lambda r: f"{r['restart_port_s']:.2f} s")
    row("restart: spawn → a key authenticates", lambda r: f"**{r['restart_serves_s']:.2f} s**")
    row("… its CPU by then (imports included)", lambda r: f"{r['restart_cpu']:.2f} s")
    row("restart: spawn → current revision", lambda r: f"{r['restart_synced_s']:.2f} s")
    row("restarted gateway RSS", lambda r: harness.mib(r["restart_rss"]))
    row("control plane RSS idle", lambda r: harness.mib(r["control_idle"]))
    for label, got in (("snapshot (rows)", "wire"), ("seed file", "seed_wire")):
        row(f"{label} on the wire", lambda r, g=got: f"{r[g]['bytes'] / (1 << 20):.1f} MiB")
        row("… per key", lambda r, g=got: f"**{r[g]['bytes'] / r['keys']:,.0f} B**")
        row("… fetched by the bench in", lambda r, g=got: f"{r[g]['seconds']:.2f} s")
        row(
            "… control plane extra RSS serving it",
            lambda r, g=got: f"**{(r[g]['control_peak'] - r[g]['control_idle']) / 1024:+.0f} MiB**",
        )
    row(
        "control plane peak RSS during the fresh sync",
        lambda r: harness.mib(r["control_peak_fresh"]),
    )
    row(
        "(bulk load of the keys; 0: a copy of BENCH_SCALE_STORES)", lambda r: f"{r['load_s']:.1f} s"
    )
    return harness.table(["measure", *(f"{r['keys']:,} keys" for r in results)], rows)


def paths_table(backend: str, results: list[dict[str, Any]]) -> str:
    first, last = results[0], results[-1]
    server = backend == "postgresql"
    rows = []
    for name, small in first["paths"].items():
        big = last["paths"][name]
        cells = [name]
        cells += [f"{harness.ms(r['paths'][name]['p50'])} / {harness.ms(r['paths'][name]['p99'])}"
                  for r in results]  # fmt: skip
        cells.append(f"×{big['p50'] / small['p50']:.2f}")
        cells += [f"{r['paths'][name]['cpu50'] * 1e3:.2f} ms" for r in results]
        cells.append(f"**×{big['cpu50'] / small['cpu50']:.2f}**")
        if server:
            cells += [f"{r['paths'][name]['server_cpu'] * 1e3:.2f} ms" for r in results]
            ratio = big["server_cpu"] / small["server_cpu"] if small["server_cpu"] else float("nan")
            cells.append(f"×{ratio:.2f}")
        cells.append(" / ".join(str(r["paths"][name]["n"]) for r in results))
        cells.append(", ".join(sorted(set(big["scans"]))) if big["scans"] else "none")
        rows.append(cells)
    sizes = [f"{r['keys']:,}" for r in results]
    big_small = f"{sizes[-1]} ÷ {sizes[0]}"
    columns = [
        "path",
        *(f"wall p50 / p99, {n} keys" for n in sizes),
        f"wall p50 {big_small}",
        *(f"CPU p50, {n}" for n in sizes),
        f"CPU p50 {big_small}",
    ]
    if server:
        columns += [*(f"server CPU / req, {n}" for n in sizes), "server CPU ratio"]
    columns += ["requests", "tables scanned"]
    return (
        f"#### {harness.BACKEND_NAMES[backend]} ({first['rounds']} interleaved rounds)\n\n"
        + harness.table(columns, rows)
    )


def plans_text(backend: str, result: dict[str, Any]) -> str:
    out = [f"Query plans, {harness.BACKEND_NAMES[backend]}, {result['keys']:,} keys:", "", "```"]
    for name, p in result["paths"].items():
        out.append(f"[{name}]")
        out += p["plan"]
    out.append("```")
    return "\n".join(out)


def main() -> None:
    import logging

    from keyplane import logs

    backends = harness.backends_option(__doc__ or "")
    logs.configure("warning")  # the in-process control plane's access log stays quiet
    logging.getLogger("keyplane").setLevel(logging.WARNING)
    harness.stop_servers_on_sigterm()
    report = [harness.header("Scale: a million keys (#17)"), ""]
    with tempfile.TemporaryDirectory(prefix="kp-scale-") as tmpdir:
        tmp = Path(tmpdir)
        if CPU_KEYS:
            cpu = [cpu_phase(tmp, n) for n in CPU_KEYS]
            report += ["#### Snapshot CPU and lookups, in process", "", cpu_table(cpu), ""]
        if GATEWAY_KEYS:
            gateway = [gateway_phase(tmp, n) for n in GATEWAY_KEYS]
            report += ["#### Gateway (control plane on SQLite)", "", gateway_table(gateway), ""]
        print("\n".join(report), flush=True)
        keep = os.environ.get("BENCH_SCALE_PATH_STORES")
        for backend in backends if PATH_KEYS else ():
            if backend == "postgresql":
                with KeptPostgres(Path(keep) if keep else None) as pg:
                    results = paths_phase(tmp, backend, PATH_KEYS, pg)
            else:
                results = paths_phase(tmp, backend, PATH_KEYS, None)
            print(paths_table(backend, results) + "\n", flush=True)
            print(plans_text(backend, results[-1]) + "\n", flush=True)
    print(harness.footer())


if __name__ == "__main__":
    main()
