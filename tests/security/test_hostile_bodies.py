"""Issue #14.5: bodies built to break a parser are a 400 in the documented shape, on both planes,
and leave no trace in the logs; a client that leaves mid-body is not an error either.

Documented error shape, both planes: ``{"code": "...", "error": "..."}`` (docs/security.md).
"""

from __future__ import annotations

import socket

import httpx2
import pytest

from tests.security.conftest import assert_clean_log
from tests.support.gateway import Key, Stack
from tests.support.procs import wait_for

DEEP = 1000


def _deep_chat() -> bytes:
    return b'{"model": "grok-4", "messages": ' + b"[" * DEEP + b"]" * DEEP + b"}"


def _assert_error_shape(response: httpx2.Response, status: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "error"}, body
    assert isinstance(body["code"], str)
    assert isinstance(body["error"], str)


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]
)
def test_the_gateway_refuses_a_deeply_nested_body(stack: Stack, key: Key, path: str) -> None:
    response = httpx2.post(
        stack.url() + path,
        content=_deep_chat(),
        headers={**key.auth, "content-type": "application/json"},
        timeout=10.0,
    )
    _assert_error_shape(response, 400)
    assert "deeper than" in response.json()["error"]
    assert_clean_log(stack.gateways["us-east-1"])


def test_the_gateway_passes_numbers_it_cannot_read(stack: Stack, key: Key) -> None:
    # A streamed chat without include_usage is rewritten; a 400-digit number must not break it.
    body = (
        b'{"model": "grok-4", "stream": true, "n_ignored": ' + b"9" * 400 + b', "messages": '
        b'[{"role": "user", "content": "hi"}]}'
    )
    response = httpx2.post(
        stack.url() + "/v1/chat/completions",
        content=body,
        headers={**key.auth, "content-type": "application/json"},
        timeout=10.0,
    )
    assert response.status_code < 500, response.text
    assert_clean_log(stack.gateways["us-east-1"])


def test_the_control_plane_refuses_a_deeply_nested_body(stack: Stack) -> None:
    team_id, secret = stack.dep.create_team("nested-control")
    for body in (
        b'{"name": ' + b"[" * DEEP + b"]" * DEEP + b"}",
        b"[" * 60_000,
        b'{"name": "x", "qps": 1' + b"0" * 5000 + b"}",
    ):
        response = httpx2.post(
            f"{stack.dep.control_url}/auth/teams/{team_id}/api-keys",
            content=body,
            headers={"Authorization": f"Bearer {secret}", "content-type": "application/json"},
            timeout=10.0,
        )
        _assert_error_shape(response, 400)
    assert_clean_log(stack.dep.procs[_control_index(stack)])


def _control_index(stack: Stack) -> int:
    return next(i for i, p in enumerate(stack.dep.procs) if p.name == "control")


def _leave_mid_body(port: int, head: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + b"content-length: 1000\r\n\r\n" + b'{"model": "grok-4", ')


@pytest.mark.parametrize("plane", ["gateway", "control"])
def test_a_client_leaving_mid_body_is_not_an_error(stack: Stack, key: Key, plane: str) -> None:
    if plane == "gateway":
        proc = stack.gateways["us-east-1"]
        head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n" + (
            f"authorization: Bearer {key.secret}\r\ncontent-type: application/json\r\n".encode()
        )
    else:
        proc = stack.dep.procs[_control_index(stack)]
        team_id, secret = stack.dep.create_team("leaves-mid-body")
        head = f"POST /auth/teams/{team_id}/api-keys HTTP/1.1\r\nhost: x\r\n".encode() + (
            f"authorization: Bearer {secret}\r\ncontent-type: application/json\r\n".encode()
        )
    port = int(proc.url.rsplit(":", 1)[1])
    for _ in range(3):
        _leave_mid_body(port, head)
    if plane == "control":
        # The access log records each departure once the server has noticed it.
        wait_for(
            lambda: proc.log_path.read_text().count('"status": 499') >= 3,
            what="three departures logged",
        )
    # Still serving, and nothing in the log that looks like a failure.
    assert httpx2.get(proc.url + "/healthz", timeout=5.0).status_code == 200
    assert_clean_log(proc)
