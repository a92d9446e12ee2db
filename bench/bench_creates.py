"""CreateApiKey throughput on SQLite (issue #11 item 5: >= 500 creates/s with 8 clients), with the
list latency beside it, optionally against a baseline checkout in the same interleaved run.

One control plane per variant (``keyplane serve control`` on SQLite, its own data directory),
each with a team of ``--list-keys`` keys loaded in-process before it starts. Then ``--rounds``
rounds; in each, every variant in turn gets:

(a) creates: bench/_loadgen.py in its own process, 8 keep-alive connections (closed loop), for
    ``--seconds`` or 20,000 creates; creates/s, latency, and the server's CPU per create
    (user + system from /proc/<pid>/stat, before and after);
(b) ListApiKeys pageSize=100, the first page ``--lists`` times in a row (one client).

``--baseline DIR`` runs a second control plane from another checkout's ``src`` (PYTHONPATH), so
old and new code share the same load, round by round. Prints a Markdown table (medians over the
rounds) and the load average. Run from the repository root:

    .venv/bin/python bench/bench_creates.py [--rounds 3] [--seconds 5] [--baseline ../base/src]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as harness

HERE = Path(__file__).resolve().parent
CLIENTS = 8
MAX_CREATES = 20_000
BODY = {
    "name": "bench create",
    "acls": ["api-key:endpoint:chat", "api-key:model:grok-4"],
    "qps": 10,
    "qpm": 600,
}


def creates(url: str, team_id: str, secret: str, pid: int, seconds: float) -> dict[str, Any]:
    argv = [harness.PYTHON, str(HERE / "_loadgen.py"), f"{url}/auth/teams/{team_id}/api-keys"]
    argv += ["--body", json.dumps(BODY), "--seconds", str(seconds)]
    argv += ["--connections", str(CLIENTS), "--max-requests", str(MAX_CREATES)]
    # The key goes by environment, not argv: a process list must not show it.
    env = {**os.environ, "LOADGEN_AUTHORIZATION": f"Bearer {secret}"}
    cpu0 = harness.cpu_seconds(pid)
    done = subprocess.run(argv, capture_output=True, timeout=seconds + 60, env=env)
    cpu = harness.cpu_seconds(pid) - cpu0
    if done.returncode != 0:
        raise SystemExit(f"load generator failed:\n{done.stderr.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    ok = result["statuses"].get("200", 0)
    if ok != result["requests"]:
        harness.log(f"statuses: {result['statuses']}")
    result["ok"] = ok
    result["server_ms_per_create"] = cpu / max(1, ok) * 1000
    return result


def lists(url: str, team_id: str, secret: str, count: int) -> list[float]:
    path = f"/auth/teams/{team_id}/api-keys"
    out: list[float] = []
    with harness.connect(url, secret) as client:
        client.get(path, params={"pageSize": 100}).raise_for_status()
        for _ in range(count):
            t0 = time.perf_counter()
            r = client.get(path, params={"pageSize": 100})
            out.append(time.perf_counter() - t0)
            r.raise_for_status()
    return out


def py_spy(pid: int, seconds: float, out: str) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid``, the thread holding the GIL (CPU, not waits) for ``seconds``."""
    spy = Path(harness.PYTHON).with_name("py-spy")
    argv = [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds))]
    argv += ["--format", "raw", "--output", out, "--rate", "250", "--gil"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Variant:
    def __init__(self, label: str, root: Path, src: str | None, list_keys: int) -> None:
        self.label = label
        self.dep = harness.Deployment(root)
        self.env = {"PYTHONPATH": src} if src else None
        self.list_team, self.list_secret = self.dep.create_team("bench-list")
        self.team, self.secret = self.dep.create_team("bench-creates")
        if list_keys:
            harness.populate(self.dep, self.list_team, list_keys)
        self.proc = self.dep.start_control(env=self.env)
        self.pid = harness.pid_of(self.proc)
        self.rounds: list[dict[str, Any]] = []
        self.list_latencies: list[float] = []
        with harness.connect(self.dep.control_url, self.secret) as client:  # warm-up
            for i in range(20):
                client.post(f"/auth/teams/{self.team}/api-keys", json={"name": f"warm {i}"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--lists", type=int, default=200)
    parser.add_argument("--list-keys", type=int, default=10_000)
    parser.add_argument("--baseline", help="another checkout's src directory, run alongside")
    parser.add_argument(
        "--py-spy", help="write py-spy's collapsed stacks of this checkout's server to this file"
    )
    args = parser.parse_args()
    loads: list[str] = [harness.loadavg().split(" / ")[0]]
    with tempfile.TemporaryDirectory(prefix="keyplane-bench-creates-") as tmp:
        variants = [Variant("this checkout", Path(tmp) / "new", None, args.list_keys)]
        if args.baseline:
            base = str(Path(args.baseline).resolve())
            variants.insert(0, Variant("baseline", Path(tmp) / "base", base, args.list_keys))
        try:
            for r in range(args.rounds):
                order = variants if r % 2 == 0 else variants[::-1]
                for v in order:
                    harness.log(f"round {r + 1}: {v.label}: creates ...")
                    spy = None
                    if args.py_spy and v is variants[-1] and r == args.rounds - 1:
                        spy = py_spy(v.pid, args.seconds, args.py_spy)
                    v.rounds.append(
                        creates(v.dep.control_url, v.team, v.secret, v.pid, args.seconds)
                    )
                    if spy is not None:
                        spy.wait(timeout=60)
                    loads.append(harness.loadavg().split(" / ")[0])
                for v in order:
                    v.list_latencies += lists(
                        v.dep.control_url, v.list_team, v.list_secret, args.lists // args.rounds
                    )
        finally:
            for v in variants:
                v.dep.stop_all()

    def med(v: Variant, get: Any) -> float:
        return statistics.median(get(x) for x in v.rounds)

    rows = [
        [
            v.label,
            " / ".join(f"{x['ok'] / x['elapsed']:.0f}" for x in v.rounds),
            f"{med(v, lambda x: x['ok'] / x['elapsed']):.0f}",
            f"{med(v, lambda x: x['server_ms_per_create']):.2f} ms",
            f"{med(v, lambda x: x['ms']['50']):.1f} ms",
            f"{med(v, lambda x: x['ms']['99']):.1f} ms",
            harness.ms(harness.percentile(v.list_latencies, 50)),
            harness.ms(harness.percentile(v.list_latencies, 99)),
        ]
        for v in variants
    ]
    print(harness.header("Creates per second (keyplane serve control, SQLite)"))
    print(
        f"{CLIENTS} keep-alive clients (bench/_loadgen.py, its own process), {args.rounds} rounds "
        f"of {args.seconds:.0f} s per variant, interleaved; list: pageSize=100 first page on a "
        f"team of {args.list_keys:,} keys, {len(variants[0].list_latencies)} requests per "
        f"variant. Load average during the run: {', '.join(loads)}.\n"
    )
    print(
        harness.table(
            [
                "code",
                "creates/s per round",
                "creates/s (median)",
                "server CPU / create",
                "create p50",
                "create p99",
                "list p50",
                "list p99",
            ],
            rows,
        )
    )
    print(harness.footer())


if __name__ == "__main__":
    harness.stop_servers_on_sigterm()
    main()
