"""A body over the size cap, sent by an ordinary Python client, reads the 413 — not a reset.

The servers refuse such a body before reading it. Closing the connection then, with the client's
bytes unread, makes the kernel answer the client's next segment with a reset, and a client still
writing (urllib, httpx, the openai SDK) loses the answer. Bodies here are larger than loopback's
socket buffers, so the client is still writing when the answer goes out.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import httpx2
import pytest

from tests.support.gateway import WILDCARD, Key, Stack, start_stack, stop_stack

#: Well past what loopback's socket buffers absorb (a few MiB), within the servers' drain bound.
OVERSIZE = 24 * 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("bodycap"))
    yield running
    stop_stack(running)


@pytest.fixture(scope="module")
def key(stack: Stack) -> Key:
    team = stack.new_team("bodycap")
    try:
        return team.create_key(WILDCARD)
    finally:
        team.close()


@pytest.fixture(scope="module")
def management(stack: Stack) -> tuple[str, str]:
    """The Management API's create-key URL and a management key's secret."""
    team_id, secret = stack.dep.create_team("bodycap-mgmt")
    return f"{stack.dep.control_url}/auth/teams/{team_id}/api-keys", secret


def oversized() -> bytes:
    return json.dumps({"model": "grok-4", "name": "x", "padding": "p" * OVERSIZE}).encode()


def targets(stack: Stack, key: Key, management: tuple[str, str]) -> dict[str, tuple[str, str]]:
    return {
        "control": management,
        "gateway": (stack.url() + "/v1/chat/completions", key.secret),
    }


def assert_413(status: int, text: str) -> None:
    assert status == 413, text[:300]
    assert json.loads(text)["code"] in ("invalid-argument", "request_too_large"), text[:300]


@pytest.mark.parametrize("plane", ["control", "gateway"])
@pytest.mark.parametrize("connection", ["keep-alive", "close"])
def test_httpx2_reads_the_413(
    stack: Stack, key: Key, management: tuple[str, str], plane: str, connection: str
) -> None:
    url, secret = targets(stack, key, management)[plane]
    headers = {
        "Authorization": f"Bearer {secret}",
        "content-type": "application/json",
        "connection": connection,
    }
    with httpx2.Client(timeout=60.0) as client:
        response = client.post(url, content=oversized(), headers=headers)
        assert_413(response.status_code, response.text)
        if connection == "keep-alive":
            # The rest of the body was read and dropped: the same connection serves the next one.
            again = client.post(url, content=b"{", headers=headers)
            assert again.status_code == 400, again.text


@pytest.mark.parametrize("plane", ["control", "gateway"])
def test_httpx2_reads_the_413_of_a_chunked_body(
    stack: Stack, key: Key, management: tuple[str, str], plane: str
) -> None:
    url, secret = targets(stack, key, management)[plane]
    body = oversized()
    pieces = (body[i : i + 256 * 1024] for i in range(0, len(body), 256 * 1024))
    headers = {"Authorization": f"Bearer {secret}", "content-type": "application/json"}

    with httpx2.Client(timeout=60.0) as client:
        response = client.post(url, content=pieces, headers=headers)

    assert_413(response.status_code, response.text)


@pytest.mark.parametrize("plane", ["control", "gateway"])
def test_urllib_reads_the_413(
    stack: Stack, key: Key, management: tuple[str, str], plane: str
) -> None:
    # urllib asks for "Connection: close": the server must read the body before it closes.
    url, secret = targets(stack, key, management)[plane]
    request = urllib.request.Request(  # noqa: S310
        url,
        data=oversized(),
        method="POST",
        headers={"Authorization": f"Bearer {secret}", "content-type": "application/json"},
    )

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60.0)  # noqa: S310 (an http:// URL on loopback)

    assert_413(refused.value.code, refused.value.read().decode())
