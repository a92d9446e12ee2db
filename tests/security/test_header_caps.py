"""Issue #14.3: every server caps the request line and headers, and answers 431 early.

A 200 MB ``Authorization`` header once took a gateway 48 s and 700 MB; now each server answers 431
after about 64 KB and its peak memory barely moves.
"""

from __future__ import annotations

import contextlib
import socket

import httpx2
import pytest

from tests.security.rawhttp import exchange, peak_rss_bytes, status_of
from tests.support.procs import Deployment, Proc

HUGE = 200 * 1024 * 1024
MEMORY_SLACK = 48 * 1024 * 1024  # peak RSS may grow by this much while refusing HUGE


@pytest.fixture(scope="module")
def servers(module_deployment: Deployment) -> dict[str, Proc]:
    dep = module_deployment
    return {
        "control": dep.procs[0],
        "gateway": dep.start_gateway("us-east-1"),
        "models": dep.start_models(),
    }


def _port(proc: Proc) -> int:
    return int(proc.url.rsplit(":", 1)[1])


SERVERS = ["control", "gateway", "models"]


@pytest.mark.parametrize("name", SERVERS)
def test_a_huge_header_is_refused_early_and_cheaply(servers: dict[str, Proc], name: str) -> None:
    proc = servers[name]
    assert proc.popen is not None
    before = peak_rss_bytes(proc.popen.pid)
    answer = exchange(
        _port(proc),
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ",
        HUGE,
        b"\r\n\r\n",
    )
    assert status_of(answer) == 431
    assert b"connection: close" in answer.lower()
    assert peak_rss_bytes(proc.popen.pid) - before < MEMORY_SLACK
    assert proc.alive()


@pytest.mark.parametrize("name", SERVERS)
def test_a_huge_request_line_is_refused(servers: dict[str, Proc], name: str) -> None:
    answer = exchange(_port(servers[name]), b"GET /", 1024 * 1024, b" HTTP/1.1\r\n\r\n")
    assert status_of(answer) == 431


@pytest.mark.parametrize("name", SERVERS)
def test_too_many_headers_are_refused(servers: dict[str, Proc], name: str) -> None:
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(1000))
    answer = exchange(_port(servers[name]), b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + headers)
    assert status_of(answer) == 431


@pytest.mark.parametrize("name", SERVERS)
def test_headers_within_the_cap_still_work(servers: dict[str, Proc], name: str) -> None:
    # Large but legal: 16 KB of cookies and fifty headers reach the application.
    headers = {f"x-extra-{i}": "v" for i in range(50)}
    headers["cookie"] = "c=" + "z" * 16_000
    path = "/healthz" if name != "models" else "/v1/models"
    response = httpx2.get(servers[name].url + path, headers=headers, timeout=10.0)
    assert response.status_code < 500
    assert response.status_code != 431


def test_the_cap_holds_on_a_keep_alive_connection(servers: dict[str, Proc]) -> None:
    # A first, normal request answered, then an oversized head on the same connection.
    with socket.create_connection(("127.0.0.1", _port(servers["control"])), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b'"ok"' not in first:
            first += sock.recv(4096)
        assert status_of(first) == 200
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nX: " + b"a" * (1 << 20))
        assert status_of(sock.recv(4096)) == 431
