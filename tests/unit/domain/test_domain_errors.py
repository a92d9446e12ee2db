"""The error family: each error's code and message, and what each carries for the answer's
headers (each plane's own error map gives the status)."""

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
)

# Built inside the test, not at collection: a mutant is active only while the test runs.
CODES: list[tuple[Callable[[], KeyplaneError], str]] = [
    (lambda: KeyplaneError("boom"), "internal"),
    (lambda: InvalidArgument("bad"), "invalid-argument"),
    (lambda: PayloadTooLarge(10), "invalid-argument"),
    (lambda: MethodNotAllowed(), "invalid-argument"),
    (lambda: UnsupportedMediaType("json only"), "invalid-argument"),
    (lambda: Unauthenticated.no_credentials(), "unauthenticated:no-credentials"),
    (lambda: Unauthenticated.bad_credentials(), "unauthenticated:bad-credentials"),
    (lambda: PermissionDenied("no"), "permission-denied"),
    (lambda: NotFound("gone"), "not-found"),
    (lambda: Conflict("again"), "failed-precondition"),
    (lambda: RateLimited("slow down", retry_after=1.0), "resource-exhausted"),
    (lambda: Unavailable("busy"), "unavailable"),
]


@pytest.mark.parametrize(("make", "code"), CODES)
def test_each_error_has_its_code(make: Callable[[], KeyplaneError], code: str) -> None:
    """The stable code each plane's error map turns into a status (control/errors.py,
    gateway/http.py)."""
    assert make().code == code


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
