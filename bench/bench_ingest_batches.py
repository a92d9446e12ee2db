"""Control-plane CPU per usage batch, by batch size: the fixed cost of a batch and the cost of a
record (issue #8: a gateway shipping every 0.2 s posts batches of tens to hundreds of records,
not the 5,000 of ``bench_usage.py ingest``).

``bench_ingest_batches.py [--baseline SRC] [--rounds N] [--keys K]``: one control plane on
SQLite (and a second one running ``SRC``, another checkout's ``src``, with ``--baseline``),
posted to as a gateway's shipper posts (``POST /internal/v1/usage``, one segment, its offsets
in order, one batch at a time) in batches of 0 (an empty post: HTTP + auth + transaction),
10, 100, 260, 1,000 and 5,000 live records over ``K`` keys; the control planes take turns
size by size, round by round. CPU is the control plane's, from /proc; the fixed cost and the
cost per record are a least-squares line through the non-empty sizes' CPU per batch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx2
from _harness import Deployment, cpu_seconds, footer, header, pid_of, table
from bench_usage import usage_frame

CLUSTER = "us-east-1"
#: Batch sizes (records) and how many batches of each a round posts.
SIZES = {0: 40, 10: 40, 100: 30, 260: 30, 1000: 12, 5000: 4}


class Plane:
    """One control plane and the gateway shipping to it."""

    def __init__(self, root: Path, name: str, src: str | None, keys: int) -> None:
        from keyplane.propagation import feed
        from keyplane.runtime import open_context

        self.name = name
        self.dep = Deployment(root / name, clusters=[CLUSTER])
        env = {"PYTHONPATH": src} if src else None
        self.pid = pid_of(self.dep.start_control(env=env))
        ctx = open_context(self.dep.settings())
        try:
            credential = feed.issue_credential(ctx, cluster=CLUSTER)
        finally:
            ctx.db.dispose()
        self.client = httpx2.Client(
            base_url=self.dep.control_url,
            timeout=60.0,
            headers={
                "Authorization": f"Bearer {credential}",
                "x-keyplane-gateway": f"{CLUSTER}/bench-{name}",
                "content-type": "application/octet-stream",
            },
        )
        self.teams = [str(uuid.uuid4()) for _ in range(max(1, keys // 50))]
        self.keys = [str(uuid.uuid4()) for _ in range(keys)]
        self.offset = 0
        self.made = 0
        self.cpu: dict[int, list[float]] = {size: [] for size in SIZES}

    def batch(self, size: int) -> bytes:
        now = int(time.time() * 1000)
        n = self.made
        self.made += size
        return b"".join(usage_frame(now + i, n + i, self.teams, self.keys) for i in range(size))

    def post(self, size: int, count: int) -> None:
        """``count`` batches of ``size`` records; the control plane's CPU per batch."""
        bodies = [self.batch(size) for _ in range(count)]
        cpu0 = cpu_seconds(self.pid)
        for data in bodies:
            end = self.offset + len(data)
            r = self.client.post(
                "/internal/v1/usage",
                params={"segment": 1, "start": self.offset, "end": end},
                content=data,
            )
            assert r.status_code == 200, r.text
            assert r.json()["accepted"] == size, r.text
            self.offset = end
        self.cpu[size].append((cpu_seconds(self.pid) - cpu0) / count)

    def close(self) -> None:
        self.client.close()
        self.dep.stop_all()


def fit(points: dict[int, float]) -> tuple[float, float]:
    """(fixed, per record) of the least-squares line through ``{size: cpu per batch}``."""
    sizes = [s for s in points if s > 0]
    slope, intercept = statistics.linear_regression(sizes, [points[s] for s in sizes])
    return intercept, slope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="another checkout's src, run as a second plane")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", type=int, default=1000)
    args = parser.parse_args()
    print(header("Usage ingest: control-plane CPU per batch by batch size"))
    with tempfile.TemporaryDirectory(prefix="keyplane-bench-ingest-") as raw:
        root = Path(raw)
        planes = [Plane(root, "current", None, args.keys)]
        if args.baseline:
            planes.insert(0, Plane(root, "baseline", args.baseline, args.keys))
        try:
            for plane in planes:  # warm-up: imports, statement caches, the tables' first pages
                plane.post(100, 10)
                plane.cpu[100].clear()
            for r in range(args.rounds):
                for size, count in SIZES.items():
                    for plane in planes if r % 2 == 0 else planes[::-1]:
                        plane.post(size, count)
                print(f"[bench_ingest_batches] round {r + 1} done", file=sys.stderr, flush=True)
        finally:
            for plane in planes:
                plane.close()
    rows = []
    for plane in planes:
        median = {size: statistics.median(v) * 1e6 for size, v in plane.cpu.items()}
        fixed, per_record = fit(median)
        rows.append(
            (
                plane.name,
                *(f"{median[s]:,.0f}" for s in SIZES),
                f"{fixed:,.0f}",
                f"{per_record:.1f}",
                f"{median[260] / 260:.1f}",
            )
        )
    columns = [f"µs/batch of {s}" for s in SIZES]
    print(
        f"\n{args.keys} keys, {args.rounds} rounds (median per size), SQLite; CPU of the "
        "control plane from /proc.\n\n"
        + table(
            ["plane", *columns, "fixed µs/batch (fit)", "µs/record (fit)", "µs/record at 260"],
            rows,
        )
    )
    print(footer())


if __name__ == "__main__":
    main()
