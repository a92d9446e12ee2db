"""Secrets on the gateway side: never in a gateway's log (at debug level), never in its replica
files, and never sent upstream. The model server receives the upstream's own key (or none), not the
client's ``Authorization``, nor the gateway's feed credential, nor any other client header.

The upstream here is a recording HTTP server on loopback: it answers like a model server and keeps
every header and body it receives, so the test sees exactly what a model server would.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support.management import connect
from tests.support.procs import Deployment, wait_for

CLUSTER = "us-east-1"
UPSTREAM_KEY = "upstream-token-" + uuid.uuid4().hex
UPSTREAM_KEY_ENV = "PROOFS_TEST_UPSTREAM_KEY"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """A model server that records what reaches it."""

    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with recorder.lock:
                    recorder.received.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                request = json.loads(body)
                usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
                if request.get("stream"):
                    chunk = {
                        "id": "r",
                        "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {"content": "ok"}}],
                    }
                    final = {
                        "id": "r",
                        "object": "chat.completion.chunk",
                        "choices": [],
                        "usage": usage,
                    }
                    data = (
                        f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(final)}\n\n"
                        "data: [DONE]\n\n"
                    ).encode()
                    content_type = "text/event-stream"
                else:
                    answer = {
                        "id": "r",
                        "object": "chat.completion",
                        "model": request.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "ok"},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": usage,
                    }
                    data = json.dumps(answer).encode()
                    content_type = "application/json"
                self.send_response(200)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


@dataclass
class World:
    dep: Deployment
    recorder: Recorder
    team: str
    management: str
    credential: str


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    recorder = Recorder()
    server = ThreadingHTTPServer(("127.0.0.1", 0), recorder.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    upstream = f"http://127.0.0.1:{server.server_address[1]}/v1"
    catalog = (
        f'[[models]]\nname = "keyed"\nupstream_url = "{upstream}"\n'
        f'upstream_api_key_env = "{UPSTREAM_KEY_ENV}"\n'
        f'[[models]]\nname = "open"\nupstream_url = "{upstream}"\n'
    )
    dep = Deployment(tmp_path, clusters=[CLUSTER], extra_config=catalog)
    try:
        dep.start_control()
        gateway = dep.start_gateway(
            CLUSTER, env={UPSTREAM_KEY_ENV: UPSTREAM_KEY, "KEYPLANE_LOG_LEVEL": "debug"}
        )
        team, management = dep.create_team("secrets")
        yield World(dep, recorder, team, management, gateway.env["KEYPLANE_GATEWAY_CREDENTIAL"])
    finally:
        dep.stop_all()
        server.shutdown()
        server.server_close()


def chat(url: str, secret: str, model: str, **extra: Any) -> httpx2.Response:
    return httpx2.post(
        url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], **extra},
        headers={
            "Authorization": f"Bearer {secret}",
            "x-request-id": "trace-1",
            "x-api-key": secret,
            "cookie": f"session={secret}",
            "x-keyplane-latency-ms": "0",
        },
        timeout=15,
    )


def test_no_secret_reaches_the_model_server_a_gateway_log_or_its_replica(world: World) -> None:
    dep, gateway_url = world.dep, world.dep.gateway_url(CLUSTER)
    acls = ["api-key:endpoint:*", "api-key:model:*"]
    secrets: list[str] = [world.management, world.credential]
    digests: list[str] = []
    with connect(dep.control_url, world.management) as c:

        def make() -> tuple[str, str]:
            r = c.post(f"/auth/teams/{world.team}/api-keys", json={"name": "k", "acls": acls})
            assert r.status_code == 200, r.text
            return r.json()["apiKeyId"], r.json()["apiKey"]

        def propagated(key_id: str) -> None:
            wait_for(
                lambda: all(
                    c.get(f"/auth/api-keys/{key_id}/propagation").json()["icPropagation"].values()
                ),
                what="propagated",
            )

        key_id, secret = make()
        propagated(key_id)
        secrets.append(secret)
        for model in ("keyed", "open"):
            assert chat(gateway_url, secret, model).status_code == 200
            assert chat(gateway_url, secret, model, stream=True).status_code == 200
        # Rotation: the old secret in its grace period, then both used.
        r = c.post(f"/auth/api-keys/{key_id}/rotate", json={})
        rotated = r.json()["apiKey"]
        secrets.append(rotated)
        digests.append(hashlib.sha256(rotated.encode()).hexdigest())
        propagated(key_id)
        assert chat(gateway_url, secret, "keyed").status_code == 200
        assert chat(gateway_url, rotated, "keyed").status_code == 200
        # Refusals: unknown, malformed, disabled, deleted, a management key, a secret in a URL.
        unknown = "xai-" + uuid.uuid4().hex * 2
        secrets.append(unknown)
        assert chat(gateway_url, unknown, "keyed").status_code == 400
        assert chat(gateway_url, "not-a-key-" + rotated, "keyed").status_code in (400, 401)
        assert chat(gateway_url, world.management, "keyed").status_code == 400
        query = httpx2.get(gateway_url + "/v1/models", params={"api_key": rotated}, timeout=5)
        assert query.status_code in (400, 401)
        disabled_id, disabled = make()
        secrets.append(disabled)
        c.put(
            f"/auth/api-keys/{disabled_id}",
            json={"apiKey": {"disabled": True}, "fieldMask": "disabled"},
        )
        propagated(disabled_id)
        assert chat(gateway_url, disabled, "keyed").status_code != 200
        deleted_id, deleted = make()
        secrets.append(deleted)
        assert c.delete(f"/auth/api-keys/{deleted_id}").status_code == 200
        propagated(deleted_id)
        assert chat(gateway_url, deleted, "keyed").status_code != 200

    # What the model server received: the upstream's key for "keyed", nothing for "open", and no
    # client header beyond the forwarded few.
    received = list(world.recorder.received)
    assert len(received) == 6
    for request in received:
        model = json.loads(request.body)["model"]
        expected = f"Bearer {UPSTREAM_KEY}" if model == "keyed" else None
        assert request.headers.get("authorization") == expected, request.headers
        assert "x-api-key" not in request.headers
        assert "cookie" not in request.headers
        assert request.headers.get("x-request-id") == "trace-1"
        seen = json.dumps(request.headers) + request.body.decode() + request.path
        for s in secrets:
            assert s not in seen, "a client secret or the feed credential reached the upstream"

    # The gateway's log (debug level) and every file of its replica.
    (gateway,) = [p for p in dep.procs if p.name.startswith("gateway-")]
    log = gateway.log_path.read_bytes()
    assert b"gateway_starting" in log  # it is the real log
    replica_dir = dep.data_dir / "gateways"
    files = sorted(p for p in replica_dir.rglob("*") if p.is_file())
    assert any(p.name == "replica.db" for p in files)
    replica = b"".join(p.read_bytes() for p in files)
    for digest in digests:
        assert digest.encode() in replica  # the search reads what the replica really wrote
    for s in [*secrets, UPSTREAM_KEY]:
        assert s.encode() not in log, "a secret in the gateway's log"
        assert s.encode() not in replica, "a secret in the gateway's replica files"
