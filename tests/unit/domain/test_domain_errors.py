"""The error family: each error's status, code and message, the same on both planes (the one map is
``http_status``), and what each carries for the answer's headers."""

from __future__ import annotations

import pytest

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
    http_status,
)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (KeyplaneError("boom"), 500, "internal"),
        (InvalidArgument("bad"), 400, "invalid-argument"),
        (PayloadTooLarge(10), 413, "invalid-argument"),
        (MethodNotAllowed(), 405, "invalid-argument"),
        (UnsupportedMediaType("json only"), 415, "invalid-argument"),
        (Unauthenticated.no_credentials(), 401, "unauthenticated:no-credentials"),
        (Unauthenticated.bad_credentials(), 401, "unauthenticated:bad-credentials"),
        (PermissionDenied("no"), 403, "permission-denied"),
        (NotFound("gone"), 404, "not-found"),
        (Conflict("again"), 409, "failed-precondition"),
        (RateLimited("slow down", retry_after=1.0), 429, "resource-exhausted"),
        (Unavailable("busy"), 503, "unavailable"),
        (Unavailable("upstream down", status=502), 502, "unavailable"),
        (Unavailable("upstream slow", status=504), 504, "unavailable"),
    ],
)
def test_each_error_has_its_status_and_code(error: KeyplaneError, status: int, code: str) -> None:
    assert http_status(error) == status
    assert error.code == code


def test_messages_are_the_ones_a_person_reads() -> None:
    assert Unauthenticated.no_credentials().code == "unauthenticated:no-credentials"
    assert Unauthenticated.bad_credentials().code == "unauthenticated:bad-credentials"
    assert Unauthenticated.no_credentials().message == "No credentials presented."
    assert str(Unauthenticated.no_credentials()) == "No credentials presented."
    bad = Unauthenticated.bad_credentials()
    assert (bad.message, str(bad)) == ("The presented credentials are not valid.",) * 2
    assert Unauthenticated("x", "the message").code == "unauthenticated:x"
    too_large = PayloadTooLarge(1024)
    assert too_large.message == "Request body is larger than the limit of 1024 bytes."
    assert (too_large.limit, too_large.field) == (1024, None)
    method = MethodNotAllowed()
    assert (method.message, str(method)) == ("Method not allowed on this route.",) * 2
    assert method.field is None


def test_an_invalid_argument_names_its_field_once() -> None:
    named = InvalidArgument("must be a string", field="name")
    assert (named.message, str(named), named.field) == ("name: must be a string",) * 2 + ("name",)
    already = InvalidArgument("name is too long", field="name")
    assert already.message == "name is too long"
    bare = InvalidArgument("bad request")
    assert (bare.message, bare.field) == ("bad request", None)


def test_a_rate_limit_carries_its_retry_and_a_copy_of_its_headers() -> None:
    headers = {"x-ratelimit-limit-requests": "5"}
    limited = RateLimited("slow down", retry_after=2.5, headers=headers)
    headers["x-ratelimit-limit-requests"] = "changed"
    assert (limited.message, limited.retry_after) == ("slow down", 2.5)
    assert limited.headers == {"x-ratelimit-limit-requests": "5"}
    assert RateLimited("slow down", retry_after=0.0).headers == {}


def test_unavailable_is_503_unless_told() -> None:
    assert Unavailable("busy").status == 503
    assert Unavailable("busy").message == "busy"
    assert Unavailable("bad gateway", status=502).status == 502
