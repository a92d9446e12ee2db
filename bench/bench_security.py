"""What the hostile-input defences cost (issue #14): the control plane's lenient reader on
crafted bodies, the gateway's body shape check, and each server refusing a 200 MB header.

    .venv/bin/python bench/bench_security.py

Prints Markdown: per-body parse times (the old trailing-comma regex beside the new pass, on sizes
the old one can still finish), the shape check beside msgspec's own decode of the same body, and
time to the 431 plus peak RSS before and after for each server.
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _harness import Deployment, footer, header, log, table

from keyplane.control.lenient import drop_trailing_commas, lenient_json
from keyplane.domain.errors import InvalidArgument
from keyplane.gateway.bounds import check_shape
from tests.security.rawhttp import exchange, peak_rss_bytes

# The pattern issue #14 found quadratic, kept here only to measure against.
_OLD = re.compile(r'("(?:\\.|[^"\\])*")|,(\s*[}\]])')


def _old_pass(text: str) -> str:
    return _OLD.sub(lambda m: m.group(1) or m.group(2), text)


def _old_lenient(text: str) -> object:
    """The old reader: plain JSON first, the regex only when that failed."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads(_old_pass(text))


def _median_s(call: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def lenient_rows() -> list[list[str]]:
    rows = []
    for size in (8 * 1024, 16 * 1024, 64 * 1024):
        hostile = '{"name": "' + '\\"' * (size // 2)
        new = _median_s(lambda h=hostile: drop_trailing_commas(h))  # type: ignore[misc]
        old = _median_s(lambda h=hostile: _old_pass(h), 1) if size <= 16 * 1024 else None  # type: ignore[misc]
        rows.append(
            [
                f"escaped quotes, {size // 1024} KiB",
                _ms(new),
                "not run (18 s in issue #14)" if old is None else _ms(old),
                "" if old is None else f"{old / new:,.0f}×",
            ]
        )
    normal = json.dumps({"name": "k", "acls": ["api-key:model:*"] * 2000}) + " "
    trailing = normal.replace("]", ",]")
    for name, body in (("valid JSON, 64 KiB", normal), ("trailing commas, 64 KiB", trailing)):
        new = _median_s(lambda b=body: lenient_json(b.encode()))  # type: ignore[misc]
        old = _median_s(lambda b=body: _old_lenient(b))  # type: ignore[misc]
        rows.append([name, _ms(new), _ms(old), f"{old / new:.1f}×"])
    return rows


def shape_rows() -> list[list[str]]:
    import msgspec

    chat = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "x" * 200}] * 18_000}
    ).encode()
    bodies = {
        "chat, 18k messages (4 MiB)": chat,
        "brackets only (4 MiB)": b"[" * (4 << 20),
        "[] pairs (4 MiB)": b"[]" * (2 << 20),
        "escaped quotes (4 MiB)": b'"' + b'\\"' * (2 << 20),
    }
    rows = []
    for name, body in bodies.items():

        def check(b: bytes = body) -> None:
            with contextlib.suppress(InvalidArgument):
                check_shape(b)

        def decode(b: bytes = body) -> None:
            with contextlib.suppress(msgspec.DecodeError, RecursionError):
                msgspec.json.decode(b)

        rows.append([name, _ms(_median_s(check)), _ms(_median_s(decode))])
    return rows


def header_rows() -> list[list[str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dep = Deployment(Path(tmp), clusters=["us-east-1"])
        try:
            procs = {
                "control plane": dep.start_control(),
                "gateway": dep.start_gateway("us-east-1"),
                "model server": dep.start_models(),
            }
            for name, proc in procs.items():
                assert proc.popen is not None
                pid, port = proc.popen.pid, int(proc.url.rsplit(":", 1)[1])
                before = peak_rss_bytes(pid)
                began = time.perf_counter()
                answer = exchange(
                    port, b"GET / HTTP/1.1\r\nAuthorization: Bearer ", 200 << 20, b"\r\n\r\n"
                )
                took = time.perf_counter() - began
                status = answer.split(b" ", 2)[1].decode() if answer else "none"
                after = peak_rss_bytes(pid)
                rows.append(
                    [
                        name,
                        status,
                        _ms(took),
                        f"{before / 2**20:.0f} MiB",
                        f"{after / 2**20:.0f} MiB",
                    ]
                )
        finally:
            dep.stop_all()
    return rows


def main() -> None:
    print(header("Hostile input: what the defences cost (issue #14)"))
    log("lenient reader")
    print("Control plane, forgiving trailing commas (median of 5; the old regex once):\n")
    print(table(["body", "now", "old regex", "old ÷ now"], lenient_rows()))
    log("gateway shape check")
    print(
        "\nGateway body shape check, and msgspec decoding the same body for scale (it gives up"
        " at once on invalid or too deep input; median of 5):\n"
    )
    print(table(["body", "shape check", "msgspec decode"], shape_rows()))
    log("header caps")
    print("\nA 200 MiB `Authorization` header sent to each server (peak RSS is VmHWM):\n")
    print(table(["server", "answer", "time to answer", "peak RSS before", "after"], header_rows()))
    print(footer())


if __name__ == "__main__":
    main()
