"""A lean HTTP/1.1 load generator for the benches, run as its own process (its CPU is its own).

    LOADGEN_AUTHORIZATION='Bearer …' python bench/_loadgen.py URL --body JSON --seconds S
        (--connections N | --rate R [--connections MAX] [--clock thread|loop]) [--max-requests N]

Closed loop (no ``--rate``): N keep-alive connections, each sending its next request when the
last answer is in; measures saturation. Open loop (``--rate R``): requests are *scheduled* at
R per second whatever the answers do, each taking an idle connection (at most ``--connections``
open); its latency counts from its scheduled time, so a stall is charged to every request it
delays (no coordinated omission). The schedule is kept by a thread sleeping to each due time
(``--clock loop``: by the event loop's timers, which tick in whole milliseconds and so send in
bursts). Requests are encoded once; answers are parsed only as far as their status and length
(Content-Length or chunked). Bounded by seconds and requests. Prints one JSON object: requests,
elapsed, statuses, latency percentiles (ms), the late starts and its CPU; in the open loop also
its own lag behind the schedule (due → written, ``lag_ms``) and the latency from the write
(``service_ms``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from typing import cast
from urllib.parse import urlsplit

PERCENTILES = (50, 90, 99, 99.9)


class Connection(asyncio.Protocol):
    """One keep-alive connection: ``request`` sends the encoded request, waits for its answer."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(-1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        status = self._complete()
        if status is not None and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def _complete(self) -> int | None:
        """The status of the answer in the buffer once it is whole (and drop it), else None."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buffer[:end]).lower()
        status = int(head[9:12])
        body_start = end + 4
        marker = head.find(b"content-length:")
        if marker >= 0:
            line_end = head.find(b"\r\n", marker)
            length = int(head[marker + 15 : line_end if line_end >= 0 else None])
            if len(self.buffer) < body_start + length:
                return None
            del self.buffer[: body_start + length]
            return status
        if b"transfer-encoding: chunked" in head:
            at = body_start
            while True:
                size_end = self.buffer.find(b"\r\n", at)
                if size_end < 0:
                    return None
                size = int(bytes(self.buffer[at:size_end]).split(b";")[0], 16)
                at = size_end + 2 + size + 2
                if len(self.buffer) < at:
                    return None
                if size == 0:
                    del self.buffer[:at]
                    return status
        del self.buffer[:body_start]
        return status

    async def request(self, raw: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


async def connect(host: str, port: int) -> Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(Connection, host, port)
    return protocol


def encode(url: str, body: bytes, headers: list[str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [
        f"POST {parts.path or '/'} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *headers,
    ]
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def closed_loop(
    host: str, port: int, raw: bytes, connections: int, seconds: float, budget: int
) -> tuple[list[float], Counter[int], float, int, list[float], list[float]]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    left = [budget]
    conns = [await connect(host, port) for _ in range(connections)]
    started = time.monotonic()
    deadline = started + seconds

    async def run(conn: Connection) -> None:
        while left[0] > 0 and time.monotonic() < deadline:
            left[0] -= 1
            if conn.lost:
                conn = await connect(host, port)
            t0 = time.perf_counter()
            status = await conn.request(raw)
            latencies.append(time.perf_counter() - t0)
            statuses[status] += 1

    await asyncio.gather(*(run(c) for c in conns))
    elapsed = time.monotonic() - started
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return latencies, statuses, elapsed, 0, [], latencies


async def open_loop(
    host: str,
    port: int,
    raw: bytes,
    rate: float,
    most: int,
    seconds: float,
    budget: int,
    clock: str = "thread",
) -> tuple[list[float], Counter[int], float, int, list[float], list[float]]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    idle: list[Connection] = [await connect(host, port) for _ in range(min(most, 8))]
    opened = [len(idle)]
    freed = asyncio.Condition()
    late = [0]  # requests that found no connection free when due
    lag: list[float] = []  # how long after its due time each request was written
    service: list[float] = []  # from the request's write to its answer
    total = min(budget, int(rate * seconds))
    tasks: set[asyncio.Task[None]] = set()

    async def one(due: float) -> None:
        async with freed:
            if not idle and opened[0] < most:
                opened[0] += 1
                conn = None
            else:
                if not idle:
                    late[0] += 1
                await freed.wait_for(lambda: bool(idle))
                conn = idle.pop()
        if conn is None or conn.lost:
            conn = await connect(host, port)
        sent = time.perf_counter()
        status = await conn.request(raw)
        answered = time.perf_counter()
        latencies.append(answered - due)
        lag.append(sent - due)
        service.append(answered - sent)
        statuses[status] += 1
        async with freed:
            idle.append(conn)
            freed.notify()

    def start(due: float) -> None:
        task = asyncio.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    started = time.perf_counter()
    if clock == "loop":
        for i in range(total):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # the event loop's timers: whole milliseconds
            start(due)
    else:
        # The schedule kept by a thread of its own, in nanosleep's precision: the event loop's
        # timers (libuv's) tick in whole milliseconds, so at 1,800/s they sent the requests in
        # bursts of about two, each one's second queued behind the first.
        loop = asyncio.get_running_loop()

        def pace() -> None:
            before = run_queue()
            for i in range(total):
                due = started + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                loop.call_soon_threadsafe(start, due)
            after = run_queue()
            pacer[0], pacer[1] = after[0] - before[0], after[1] - before[1]

        await asyncio.to_thread(pace)
    if tasks:
        await asyncio.wait(tasks, timeout=seconds + 30)
    elapsed = time.perf_counter() - started
    for c in idle:
        if c.transport is not None:
            c.transport.close()
    return latencies, statuses, elapsed, late[0], lag, service


#: The pacing thread's run-queue wait (s) and time slices: it ends before the process reads its own.
pacer = [0.0, 0]


def run_queue() -> tuple[float, int]:
    """Seconds the calling thread has waited on a run queue so far, and its time slices."""
    try:
        with open("/proc/thread-self/schedstat") as stat:
            fields = stat.read().split()
    except OSError:
        return 0.0, 0
    return int(fields[1]) / 1e9, int(fields[2])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--body", required=True)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument(
        "--clock",
        choices=("thread", "loop"),
        default="thread",
        help="Open loop: what keeps the schedule (loop: the event loop's millisecond timers).",
    )
    args = parser.parse_args()
    headers = list(args.header)
    if os.environ.get("LOADGEN_AUTHORIZATION"):  # a secret: by environment, never in argv
        headers.append("Authorization: " + os.environ["LOADGEN_AUTHORIZATION"])
    host, port, raw = encode(args.url, args.body.encode(), headers)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        pass
    cpu0 = time.process_time()
    if args.rate is None:
        run = closed_loop(host, port, raw, args.connections, args.seconds, args.max_requests)
    else:
        run = open_loop(
            host,
            port,
            raw,
            args.rate,
            args.connections,
            args.seconds,
            args.max_requests,
            args.clock,
        )
    queued0 = run_queue()
    latencies, statuses, elapsed, late, lag, service = asyncio.run(run)
    cpu = time.process_time() - cpu0
    queued1 = run_queue()
    waited = queued1[0] - queued0[0] + pacer[0]
    slices = queued1[1] - queued0[1] + pacer[1]
    print(
        json.dumps(
            {
                "requests": len(latencies),
                "elapsed": elapsed,
                "rate": len(latencies) / elapsed if elapsed else 0.0,
                "statuses": {str(k): v for k, v in statuses.items()},
                "ms": {str(p): percentile(latencies, p) * 1000 for p in PERCENTILES},
                "late": late,
                "lag_ms": {str(p): percentile(lag, p) * 1000 for p in PERCENTILES} if lag else {},
                "service_ms": {str(p): percentile(service, p) * 1000 for p in PERCENTILES},
                "cpu_us": cpu / max(1, len(latencies)) * 1e6,
                # Its event loop's thread and its pacing thread: waits on a run queue, per request.
                "runq_us": waited / max(1, len(latencies)) * 1e6,
                "slices": slices / max(1, len(latencies)),
                "pid": os.getpid(),
            }
        )
    )


if __name__ == "__main__":
    main()
