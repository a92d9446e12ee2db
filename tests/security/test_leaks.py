"""Issue #14.7: a client cannot reach the project's own knobs, and operators' views need a token.

The gateway strips a client's ``x-keyplane-*`` headers (the built-in model server's test knobs)
before forwarding; ``/metrics``, the detailed ``/healthz`` and the model server's ``/_stats``
answer only with the metrics token; the open ``/healthz`` says ready or not, nothing more.
"""

from __future__ import annotations

import httpx2

from tests.support.gateway import HELLO, Key, Stack
from tests.support.procs import OPERATOR


def test_the_projects_own_headers_do_not_reach_the_upstream(stack: Stack, key: Key) -> None:
    with httpx2.Client(base_url=stack.url(), headers=key.auth, timeout=10.0) as client:
        response = client.post(
            "/v1/chat/completions",
            json={"model": "grok-4", "messages": HELLO},
            headers={
                "x-keyplane-fail-status": "500",
                "x-keyplane-latency-ms": "60000",
                "x-keyplane-token-latency-ms": "60000",
            },
        )
    assert response.status_code == 200, response.text
    assert response.json()["choices"]


def test_metrics_need_the_operators_token(stack: Stack) -> None:
    url = stack.url() + "/metrics"
    assert httpx2.get(url, timeout=5.0).status_code == 404
    wrong = httpx2.get(url, headers={"Authorization": "Bearer guess"}, timeout=5.0)
    assert wrong.status_code == 404
    right = httpx2.get(url, headers=OPERATOR, timeout=5.0)
    assert right.status_code == 200
    assert "python_info" in right.text or "keyplane_" in right.text


def test_open_health_is_minimal(stack: Stack) -> None:
    url = stack.url() + "/healthz"
    anonymous = httpx2.get(url, timeout=5.0).json()
    assert set(anonymous) == {"status", "synced", "limiter"}
    detailed = httpx2.get(url, headers=OPERATOR, timeout=5.0).json()
    assert detailed["cluster"] == "us-east-1"
    assert isinstance(detailed["revision"], int)
    control = httpx2.get(stack.dep.control_url + "/healthz", timeout=5.0).json()
    assert control == {"status": "ok"}


def test_model_server_stats_need_the_token(stack: Stack) -> None:
    url = stack.dep.model_url + "/_stats"
    assert httpx2.get(url, timeout=5.0).status_code == 404
    assert httpx2.delete(url, timeout=5.0).status_code == 404
    stats = httpx2.get(url, headers=OPERATOR, timeout=5.0)
    assert stats.status_code == 200
    assert "in_flight" in stats.json()
