"""Comparing the Management API's one fast path (``keyplane.control.lenient.FastPaths``) with
FastAPI's handler: run the same requests with it and without it (the endpoint's ``FAST_PATH``
mark removed), counting what it answered itself."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi import Request, Response
from fastapi.routing import APIRoute

from keyplane.control.lenient import FAST_PATH, FastPaths
from keyplane.services import admin
from tests.support.inprocess import ControlApp

MASKS = (
    (re.compile(rb"xai-[A-Za-z0-9]{80}"), b"<secret>"),
    (re.compile(rb"xai-(mgmt-)?\.\.\.[A-Za-z0-9]{4}"), b"<redacted>"),
    (re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), b"<uuid>"),
    (re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"), b"<time>"),
    (re.compile(rb'"revision":\s*"?\d+"?'), b'"revision":<n>'),
    (re.compile(rb'"nextPageToken":"[^"]*"'), b'"nextPageToken":<token>'),
)


def mask(raw: bytes) -> bytes:
    """``raw`` with what differs by nature between two runs (ids, secrets, times) masked."""
    for pattern, masked in MASKS:
        raw = pattern.sub(masked, raw)
    return raw


def each_caller(
    client: Any,
    method: str,
    path: str,
    secret: str,
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    masked: bool = True,
    label: tuple[Any, ...] = (),
) -> list[tuple[Any, ...]]:
    """``method path`` sent by the holder of ``secret``, by no one and by a bad key: each
    answer's (*label, caller, status, sorted headers, body), masked (``mask``) unless not
    ``masked``."""
    same: Callable[[bytes], bytes] = mask if masked else (lambda raw: raw)
    out: list[tuple[Any, ...]] = []
    for who, auth in (("key", f"Bearer {secret}"), ("none", None), ("bad", "Bearer x")):
        sent = dict(headers or {})
        if auth is not None:
            sent["authorization"] = auth
        r = client.request(method, path, content=content, headers=sent)
        answer_headers = sorted((k, same(v.encode())) for k, v in r.headers.items())
        out.append((*label, who, r.status_code, answer_headers, same(r.content)))
    return out


def team(control: ControlApp, acls: list[str] | None = None) -> tuple[str, str]:
    """A fresh team and the secret of its management key (holding ``acls``, or every RPC)."""
    made = admin.create_team(control.ctx, name=f"fast-{uuid.uuid4()}")
    key = admin.create_management_key(control.ctx, team_id=made.team_id, name="k", acls=acls)
    return made.team_id, key.secret


@contextmanager
def answered(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """The (endpoint name, status) of each answer the fast path gave itself (not the refusals
    it raised, not what it left to FastAPI), while the block runs."""
    seen: list[tuple[str, int]] = []
    call = FastPaths._call

    async def counted(route: APIRoute, plan: Any, request: Request) -> Response | None:
        answer = await call(route, plan, request)
        if answer is not None:
            seen.append((route.name, answer.status_code))
        return answer

    with monkeypatch.context() as patch:
        patch.setattr(FastPaths, "_call", staticmethod(counted))
        yield seen


def with_and_without(
    monkeypatch: pytest.MonkeyPatch,
    endpoints: list[Callable[..., Any]],
    run: Callable[[], list[Any]],
) -> tuple[list[Any], list[tuple[str, int]], list[Any]]:
    """``run()``'s answers with the fast path, what it answered itself, and ``run()``'s answers
    with FastAPI's handler answering ``endpoints`` (their marks removed)."""
    for endpoint in endpoints:
        assert getattr(endpoint, FAST_PATH) is True
    with answered(monkeypatch) as seen:
        fast = run()
    with monkeypatch.context() as patch:
        for endpoint in endpoints:
            patch.delattr(endpoint, FAST_PATH)
        slow = run()
    return fast, seen, slow
