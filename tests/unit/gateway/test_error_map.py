"""The gateway's own error map: every error the domain defines has its status, the gateway's
upstream failures theirs, and each is answered in keyplane's error shape with its headers."""

from __future__ import annotations

import json

import pytest

from keyplane.asgi import Message
from keyplane.domain.errors import (
    Conflict,
    InvalidArgument,
    KeyplaneError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
)
from keyplane.gateway.http import UpstreamTimeout, UpstreamUnreachable, send_error, status_of


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidArgument("x"), 400),
        (PayloadTooLarge(10), 413),
        (MethodNotAllowed(), 405),
        (UnsupportedMediaType("x"), 415),
        (Unauthenticated.no_credentials(), 401),
        (PermissionDenied("x"), 403),
        (NotFound("x"), 404),
        (Conflict("x"), 409),
        (RateLimited("x", retry_after=0.2), 429),
        (Unavailable("x"), 503),
        (UpstreamUnreachable("x"), 502),
        (UpstreamTimeout("x"), 504),
        (KeyplaneError("x"), 500),
    ],
)
def test_each_error_has_its_status(error: KeyplaneError, status: int) -> None:
    assert status_of(error) == status


async def _answer(error: KeyplaneError) -> tuple[Message, dict[str, str]]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await send_error(send, error)
    start, body = sent
    assert json.loads(body["body"]) == {"code": error.code, "error": error.message}
    return start, {k.decode(): v.decode() for k, v in start["headers"]}


async def test_a_refusal_says_when_to_retry_and_what_is_left() -> None:
    error = RateLimited("slow down", retry_after=0.2, headers={"x-ratelimit-limit-requests": "5"})
    start, headers = await _answer(error)
    assert start["status"] == 429
    assert headers["retry-after"] == "1"  # whole seconds, never 0
    assert headers["x-ratelimit-limit-requests"] == "5"


async def test_no_credentials_asks_for_a_bearer_token() -> None:
    start, headers = await _answer(Unauthenticated.no_credentials())
    assert start["status"] == 401
    assert headers["www-authenticate"] == "Bearer"
