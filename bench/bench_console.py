"""Console benchmark: the keys page of a team holding 100,000 keys, and what a browser downloads.

Against a real ``keyplane serve control`` process on SQLite (keys loaded in-process before it
starts, as bench_control does), signed in through the console's own form:

(a) server time of ``GET /console/keys`` (the first page, 50 rows), read from the control plane's
    access log (its ``ms`` is the time from the request reaching the app to the last byte), and
    the same over HTTP on loopback, for the first page, a page deep in the walk, a name search
    that matches nothing (the worst case: every key's name is read), an ACL filter, and one
    propagation poll of a full page;
(b) time to first render in Debian's chromium (Playwright): navigation start to first contentful
    paint, cold (empty cache) and warm;
(c) page weight: the HTML and every asset the page loads, as sent and gzipped.

Prints a Markdown report on stdout; progress on stderr. Run from the repository root:
``.venv/bin/python bench/bench_console.py`` (BENCH_KEYS shrinks the run)."""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as harness
import httpx2

from tests.console.conftest import CHROMIUM, CHROMIUM_ARGS

KEYS = int(os.environ.get("BENCH_KEYS", "100000"))
ROUNDS = 60


def sign_in(client: httpx2.Client, secret: str) -> None:
    form = client.get("/console/sign-in").text
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token is not None
    answer = client.post("/console/sign-in", data={"csrf": token.group(1), "key": secret})
    assert answer.status_code == 303, answer.text


def server_ms(log: Path, path: str, since: int) -> list[float]:
    """The access log's ``ms`` of every request to ``path`` after byte ``since`` of the log."""
    with log.open("rb") as f:
        f.seek(since)
        lines = f.read().decode(errors="replace").splitlines()
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "request" and entry.get("path") == path:
            out.append(float(entry["ms"]))
    return out


def timed(client: httpx2.Client, log: Path, url: str, path: str) -> dict[str, float]:
    since = log.stat().st_size
    wall = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        answer = client.get(url)
        wall.append(time.perf_counter() - t0)
        assert answer.status_code == 200, answer.status_code
    time.sleep(0.3)  # the log line is written after the answer
    server = [m / 1000 for m in server_ms(log, path, since)]
    return {
        "server_p50": harness.percentile(server, 50),
        "server_p95": harness.percentile(server, 95),
        "http_p50": harness.percentile(wall, 50),
        "http_p95": harness.percentile(wall, 95),
    }


def page_weight(client: httpx2.Client, path: str, label: str) -> list[tuple[str, int, int]]:
    html = client.get(path).content
    rows = [(label, len(html), len(gzip.compress(html)))]
    for asset in re.findall(rb'(?:src|href)="(/console/static/[^"]+)"', html):
        body = client.get(asset.decode()).content
        rows.append((asset.decode(), len(body), len(gzip.compress(body))))
    return rows


def first_paint(base: str, cookie: str) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    script = (
        "() => { const p = performance.getEntriesByName('first-contentful-paint')[0];"
        " const n = performance.getEntriesByType('navigation')[0];"
        " return [p ? p.startTime : -1, n.responseEnd, n.domContentLoadedEventEnd]; }"
    )
    out: dict[str, float] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            host = base.split("//", 1)[1].split(":")[0]
            context.add_cookies(
                [{"name": "kp_session", "value": cookie, "domain": host, "path": "/console"}]
            )
            page = context.new_page()
            for label in ("cold", "warm"):
                page.goto(f"{base}/console/keys", wait_until="load")
                time.sleep(0.2)
                fcp, response_end, dcl = page.evaluate(script)
                out[f"{label}_fcp"] = fcp / 1000
                out[f"{label}_response_end"] = response_end / 1000
                out[f"{label}_dcl"] = dcl / 1000
            context.close()
        finally:
            browser.close()
    return out


def main() -> None:
    harness.stop_servers_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        dep = harness.Deployment(Path(tmp))
        try:
            team_id, secret = dep.create_team("bench-console")
            harness.log(f"populating {KEYS} keys ...")
            loaded = harness.populate(dep, team_id, KEYS, progress=harness.log)
            dep.start_control()
            log = dep.root / "control.log"
            with httpx2.Client(base_url=dep.control_url, timeout=30.0) as client:
                sign_in(client, secret)
                client.get("/console/keys")  # warm the templates and the catalog
                first = client.get("/console/keys").text
                ids = re.findall(r'/console/keys/([0-9a-f-]{36})"', first)
                harness.log("server time ...")
                deep = "/console/keys"
                for _ in range(20):  # 20 pages in: 1,000 keys deep
                    page = client.get(deep).text
                    token = re.search(r'href="(/console/keys\?page=[^"]+)" rel="next"', page)
                    assert token is not None
                    deep = token.group(1).replace("&amp;", "&")
                polled = "/console/keys/propagation?" + "&".join(f"id={i}" for i in ids)
                cases = [
                    ("first page", "/console/keys", "/console/keys"),
                    ("page 21 (after 1,000 keys)", deep, "/console/keys"),
                    (
                        "search matching nothing",
                        "/console/keys?q=no+such+name",
                        "/console/keys",
                    ),
                    (
                        "ACL filter (every key matches)",
                        "/console/keys?acl=api-key:endpoint:chat",
                        "/console/keys",
                    ),
                    ("propagation poll, 50 keys", polled, "/console/keys/propagation"),
                ]
                results = [(name, timed(client, log, url, path)) for name, url, path in cases]
                weights = page_weight(client, "/console/keys", "/console/keys (HTML, 50 rows)")
                detail = page_weight(
                    client, f"/console/keys/{ids[0]}", "/console/keys/{id} (HTML, with charts)"
                )
                cookie = client.cookies["kp_session"]
            harness.log("first paint in chromium ...")
            paint = first_paint(dep.control_url, cookie)
        finally:
            dep.stop_all()

    print(harness.header(f"Console: the keys page at {KEYS:,} keys (SQLite)"))
    print(f"Loaded {loaded.count:,} keys in {loaded.seconds:.1f} s; {ROUNDS} requests per row.\n")
    print(
        harness.table(
            ["request", "server p50", "server p95", "HTTP p50", "HTTP p95"],
            [
                [
                    name,
                    harness.ms(r["server_p50"]),
                    harness.ms(r["server_p95"]),
                    harness.ms(r["http_p50"]),
                    harness.ms(r["http_p95"]),
                ]
                for name, r in results
            ],
        )
    )
    print("\nTime to first render in chromium (navigation start to first contentful paint):\n")
    print(
        harness.table(
            ["load", "first contentful paint", "HTML received", "DOMContentLoaded"],
            [
                [
                    label,
                    harness.ms(paint[f"{label}_fcp"]),
                    harness.ms(paint[f"{label}_response_end"]),
                    harness.ms(paint[f"{label}_dcl"]),
                ]
                for label in ("cold", "warm")
            ],
        )
    )
    for title, rows in (("the keys page", weights), ("a key's page (usage charts)", detail)):
        total = sum(w[1] for w in rows)
        total_gz = sum(w[2] for w in rows)
        print(f"\nPage weight of {title} (everything it loads):\n")
        print(
            harness.table(
                ["resource", "bytes", "gzipped"],
                [[name, f"{raw:,}", f"{gz:,}"] for name, raw, gz in rows]
                + [["**total**", f"**{total:,}**", f"**{total_gz:,}**"]],
            )
        )
    print(harness.footer())


if __name__ == "__main__":
    main()
