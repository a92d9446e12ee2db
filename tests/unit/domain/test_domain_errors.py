"""The error family: each error's code, message and status, and what each carries for the
answer's headers."""

from __future__ import annotations

from collections.abc import Callable

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

# Built inside each test, not at collection: a mutant is active only while the test runs.
ERRORS: list[tuple[Callable[[], KeyplaneError], int, str]] = [
    (lambda: KeyplaneError("boom"), 500, "internal"),
    (lambda: InvalidArgument("bad"), 400, "invalid-argument"),
    (lambda: PayloadTooLarge(10), 413, "invalid-argument"),
    (lambda: MethodNotAllowed(), 405, "invalid-argument"),
    (lambda: UnsupportedMediaType("json only"), 415, "invalid-argument"),
    (lambda: Unauthenticated.no_credentials(), 401, "unauthenticated:no-credentials"),
    (lambda: Unauthenticated.bad_credentials(), 401, "unauthenticated:bad-credentials"),
    (lambda: PermissionDenied("no"), 403, "permission-denied"),
    (lambda: NotFound("gone"), 404, "not-found"),
    (lambda: Conflict("again"), 409, "failed-precondition"),
    (lambda: RateLimited("slow down", retry_after=1.0), 429, "resource-exhausted"),
    (lambda: Unavailable("busy"), 503, "unavailable"),
    (lambda: Unavailable("upstream down", status=502), 502, "unavailable"),
]


@pytest.mark.parametrize(("make", "code"), [(make, code) for make, _, code in ERRORS])
def test_each_error_has_its_code(make: Callable[[], KeyplaneError], code: str) -> None:
    assert make().code == code


@pytest.mark.parametrize(("make", "status"), [(make, status) for make, status, _ in ERRORS])
def test_the_status_of_each_error(make: Callable[[], KeyplaneError], status: int) -> None:
    """``http_status``, while the domain still holds the one map (#15 moves a map to each plane;
    this test goes with it)."""
    assert http_status(make()) == status


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
