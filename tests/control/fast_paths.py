"""What the byte-for-byte tests of the create's and the list's fast paths share: a fresh team
and key, and counting what a fast path answered itself."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi import Request, Response

from keyplane.control.lenient import FAST_PATH, FastPath
from keyplane.services import admin
from tests.support.inprocess import ControlApp


def team(control: ControlApp, acls: list[str] | None = None) -> tuple[str, str]:
    """A fresh team and the secret of its management key (holding ``acls``, or every RPC)."""
    made = admin.create_team(control.ctx, name=f"fast-{uuid.uuid4()}")
    key = admin.create_management_key(control.ctx, team_id=made.team_id, name="k", acls=acls)
    return made.team_id, key.secret


def counting(monkeypatch: pytest.MonkeyPatch, endpoint: Any, fast: FastPath) -> list[int]:
    """The statuses of the answers ``fast`` (``endpoint``'s fast path) gives itself from now on
    (not the refusals it raises, not what it leaves to FastAPI)."""
    assert getattr(endpoint, FAST_PATH) is fast
    answered: list[int] = []

    async def counted(request: Request) -> Response | None:
        answer: Response | None = await fast(request)
        if answer is not None:
            answered.append(answer.status_code)
        return answer

    monkeypatch.setattr(endpoint, FAST_PATH, counted)
    return answered
