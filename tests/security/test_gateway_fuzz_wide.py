"""The gateway fuzz pass widened (issue #12), beside ``test_gateway_fuzz``'s bodies and headers:
any method on any path, hostile Authorization headers, bodies past the cap, and an upstream that
is down. Every input is bounded; the only 5xx allowed are 502 and 504, and only from the gateway
whose upstream is down.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.conftest import assert_clean_log
from tests.security.test_gateway_fuzz import ROUTES, _assert_documented, _bodies
from tests.support.gateway import WILDCARD, Key, Stack, start_stack, stop_stack

_METHODS = st.sampled_from(
    ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND", "GETT"]
)
_segment = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#%"),
    max_size=12,
)
_paths = st.one_of(
    # Not "//…": the client reads a relative URL starting so as an authority (InvalidURL).
    st.lists(_segment, max_size=5)
    .map(lambda parts: "/" + "/".join(parts))
    .filter(lambda path: not path.startswith("//")),
    st.lists(_segment, max_size=3).map(lambda parts: "/v1/" + "/".join(parts)),
    st.sampled_from(
        [
            "/v1/chat/completions/",
            "/v1//chat/completions",
            "/v1/models/" + "x" * 4000,
            "/v1/models/%2e%2e%2f%2e%2e",
            "/v1/models/%ff%fe",
            "/v1/chat/completions?stream=true&stream=false",
            "/healthz?" + "a=1&" * 500,
            "/metrics",
            "/_stats",
        ]
    ),
)
_auth = st.one_of(
    st.none(),
    st.sampled_from(
        ["", "Bearer", "Basic dXNlcjpwYXNz", "bearer xai-", "Bearer \txai-x", "Bearer  a"]
    ),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200).map(
        lambda t: ("Bearer " + t).strip()
    ),
    st.integers(min_value=1_000, max_value=70_000).map(lambda n: "Bearer " + "x" * n),
)


def _send(
    base: str, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> httpx2.Response:
    with httpx2.Client(base_url=base, timeout=20.0) as client:
        return client.request(method, path, content=body, headers=headers)


def _assert_answer(response: httpx2.Response, *, upstream_down: bool = False) -> None:
    if upstream_down and response.status_code in (502, 504):
        body = response.json()
        assert set(body) == {"code", "error"}, body
        return
    if response.request.method == "HEAD":  # an answer with no body: only its status to check
        assert response.status_code < 500, response.status_code
        return
    _assert_documented(response)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=_METHODS, path=_paths, auth=_auth, body=st.none() | _bodies)
def test_any_method_path_and_authorization_is_answered_without_a_5xx(
    stack: Stack, key: Key, method: str, path: str, auth: str | None, body: bytes | None
) -> None:
    headers = {"content-type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    if path.startswith("/v1/chat"):
        headers["Authorization"] = auth or f"Bearer {key.secret}"
    response = _send(stack.url(), method, path, body, headers)
    _assert_answer(response)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(extra=st.integers(min_value=1, max_value=2 * 1024 * 1024), route=st.sampled_from(ROUTES))
def test_a_body_past_the_cap_is_413(
    stack: Stack, key: Key, extra: int, route: tuple[str, str]
) -> None:
    method, path = route
    if method != "POST":
        return
    body = b'{"model": "grok-4", "pad": "' + b"p" * (4 * 1024 * 1024 + extra) + b'"}'
    response = _send(
        stack.url(), method, path, body, {**key.auth, "content-type": "application/json"}
    )

    assert response.status_code == 413, response.text[:200]
    assert set(response.json()) == {"code", "error"}


@pytest.fixture(scope="module")
def no_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Key]]:
    """A gateway whose model server never started: its upstream refuses every connection."""
    running = start_stack(tmp_path_factory.mktemp("no-upstream"), models=False)
    team = running.new_team("fuzz-down")
    try:
        yield running, team.create_key(WILDCARD)
    finally:
        team.close()
        stop_stack(running)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(route=st.sampled_from(ROUTES), body=_bodies)
def test_with_the_upstream_down_the_only_5xx_are_502_and_504(
    no_upstream: tuple[Stack, Key], route: tuple[str, str], body: bytes
) -> None:
    stack, key = no_upstream
    method, path = route
    headers = {**key.auth, "content-type": "application/json"}
    response = _send(stack.url(), method, path, body if method == "POST" else None, headers)
    _assert_answer(response, upstream_down=True)


def test_the_widely_fuzzed_gateways_logged_no_trace(
    stack: Stack, no_upstream: tuple[Stack, Key]
) -> None:
    for running in (stack, no_upstream[0]):
        assert_clean_log(running.gateways["us-east-1"])
        assert running.gateways["us-east-1"].alive()
