"""Helpers for end-to-end tests of the gateway: a running stack, teams, keys, and inference calls.

``start_stack`` starts a control plane, then the model server and the gateways side by side (the
slow part is each process's start-up, so doing them together saves most of it). A ``Team`` is a
fresh team with its management client; ``Team.create_key`` makes an API key through the
Management API and returns once every gateway of the stack enforces it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2

from tests.support.management import ManagementClient, connect
from tests.support.procs import OPERATOR, Deployment, Proc, wait_for

#: A request to the built-in model server that is cheap and deterministic.
HELLO = [{"role": "user", "content": "Say hello"}]
#: Every endpoint and every model.
WILDCARD = ["api-key:endpoint:*", "api-key:model:*"]


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_now(seconds: float) -> str:
    return rfc3339(datetime.now(UTC) + timedelta(seconds=seconds))


@dataclass
class Stack:
    """A deployment whose control plane, model server and gateways are running."""

    dep: Deployment
    clusters: tuple[str, ...]
    models: Proc | None = None
    gateways: dict[str, Proc] = field(default_factory=dict)
    _teams: int = 0

    def url(self, cluster: str | None = None) -> str:
        return self.dep.gateway_url(cluster or self.clusters[0])

    def client(self, secret: str | None = None, cluster: str | None = None) -> httpx2.Client:
        """An HTTP client for a gateway, sending ``secret`` as the bearer token if given."""
        headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
        return httpx2.Client(base_url=self.url(cluster), headers=headers, timeout=15.0)

    def new_team(self, prefix: str = "team") -> Team:
        self._teams += 1
        team_id, secret = self.dep.create_team(f"{prefix}-{self._teams}")
        mgmt = ManagementClient(
            team_id, secret, connect(self.dep.control_url, secret), defaults={"name": "e2e"}
        )
        return Team(self, mgmt)

    def model_stats(self) -> dict[str, int]:
        response = httpx2.get(self.dep.model_url + "/_stats", headers=OPERATOR, timeout=5.0)
        assert response.status_code == 200, response.text
        stats: dict[str, int] = response.json()
        return stats

    def restart_models(self) -> None:
        if self.models is not None:
            self.models.stop()
        self.models = self.dep.start_models()


def start_stack(
    root: Path,
    clusters: Sequence[str] = ("us-east-1",),
    *,
    extra_config: str = "",
    models: bool = True,
    forward_test_headers: bool = True,
) -> Stack:
    """Start the model server and the control plane, then the gateways, side by side.

    Gateways wait for the control plane only because their feed credential is issued in its
    store; the model server depends on nothing.
    """
    dep = Deployment(
        root,
        clusters=list(clusters),
        extra_config=extra_config,
        forward_test_headers=forward_test_headers,
    )
    try:
        with ThreadPoolExecutor(max_workers=len(clusters) + 1) as pool:
            model_proc = dep.models() if models else None
            futures = []
            if model_proc is not None:
                futures.append(pool.submit(model_proc.start, ready_path="/v1/models"))
            dep.start_control()
            gateways = {cluster: dep.gateway(cluster) for cluster in clusters}
            futures += [pool.submit(proc.start) for proc in gateways.values()]
            for future in futures:
                future.result()
        for proc in gateways.values():
            dep.await_first_snapshot(proc)
    except BaseException:
        stop_stack(dep)
        raise
    return Stack(dep, tuple(clusters), model_proc, gateways)


def stop_stack(stack: Stack | Deployment) -> None:
    """Stop every process of the stack, the control plane last.

    The control plane is given half a second: at test teardown its graceful wait for gateways'
    long-polls (which are gone by then) buys nothing.
    """
    dep = stack.dep if isinstance(stack, Stack) else stack
    for proc in reversed(dep.procs):
        if proc.name == "control":
            proc.stop(timeout=0.5)
        else:
            proc.stop()


@dataclass
class Key:
    key_id: str
    secret: str
    redacted: str
    body: dict[str, Any]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


@dataclass
class Team:
    """A fresh team of a stack: its Management API client, and waits for its changes to reach
    every gateway."""

    stack: Stack
    mgmt: ManagementClient

    @property
    def team_id(self) -> str:
        return self.mgmt.team_id

    def close(self) -> None:
        self.mgmt.close()

    def propagated(self, key_id: str) -> bool:
        status = self.mgmt.propagation(key_id)
        assert set(status) == {f"{c}.api.test" for c in self.stack.clusters}, status
        return all(status.values())

    def wait_propagated(self, key_id: str, what: str = "key change") -> None:
        wait_for(lambda: self.propagated(key_id), timeout=15.0, what=f"{what} propagated")

    def create_key(
        self, acls: Sequence[str] | None = None, *, wait: bool = True, **body: Any
    ) -> Key:
        created = self.mgmt.create_key(acls, **body)
        key = Key(created["apiKeyId"], created["apiKey"], created["redactedApiKey"], created)
        if wait:
            self.wait_propagated(key.key_id, "create")
        return key

    def update_key(self, key: Key, mask: str, *, wait: bool = True, **fields: Any) -> None:
        self.mgmt.update_key(key.key_id, mask, **fields)
        if wait:
            self.wait_propagated(key.key_id, f"update of {mask}")

    def rotate_key(self, key: Key, *, wait: bool = True, **body: Any) -> Key:
        rotated = self.mgmt.rotate_key(key.key_id, **body)
        if wait:
            self.wait_propagated(key.key_id, "rotation")
        return Key(key.key_id, rotated["apiKey"], rotated["redactedApiKey"], rotated)

    def delete_key(self, key: Key, *, wait: bool = True) -> None:
        self.mgmt.delete_key(key.key_id)
        if wait:
            self.wait_propagated(key.key_id, "deletion")


def error_of(response: httpx2.Response) -> tuple[int, str, str]:
    """``(status, code, message)`` of a keyplane error answer; fails if it is not one."""
    body = response.json()
    assert set(body) == {"code", "error"}, body
    return response.status_code, body["code"], body["error"]


def chat_body(model: str = "grok-4", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": HELLO, **extra}


@dataclass
class StreamResult:
    """What a client saw of one SSE stream, with the monotonic time each event arrived."""

    status: int
    events: list[tuple[float, str]]  # (arrival, the data line's payload)
    started: float
    ended: float

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1][1] == "[DONE]"

    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(data) for _, data in self.events if data != "[DONE]"]

    def content(self) -> str:
        return "".join(
            choice["delta"].get("content") or ""
            for chunk in self.chunks()
            for choice in chunk.get("choices") or ()
        )

    def content_chunk_times(self) -> list[float]:
        times = []
        for at, data in self.events:
            if data == "[DONE]":
                continue
            chunk = json.loads(data)
            if any(c["delta"].get("content") for c in chunk.get("choices") or ()):
                times.append(at)
        return times


def sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The payloads of an SSE stream's ``data:`` lines."""
    for line in lines:
        if line.startswith("data:"):
            yield line[5:].strip()


def stream_chat(
    client: httpx2.Client,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    *,
    max_events: int = 100_000,
) -> StreamResult:
    """Run one streaming chat request to its end (bounded by ``max_events``)."""
    started = time.monotonic()
    events: list[tuple[float, str]] = []
    with client.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": True}, headers=headers
    ) as response:
        if response.status_code != 200:
            response.read()
            return StreamResult(response.status_code, [], started, time.monotonic())
        for data in sse_data(response.iter_lines()):
            events.append((time.monotonic(), data))
            if len(events) >= max_events:
                break
    return StreamResult(200, events, started, time.monotonic())
