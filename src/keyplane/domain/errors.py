"""The errors every layer raises, and nothing else; each plane maps them to HTTP in one place.

    KeyplaneError                 base: a stable ``code`` plus a message fit for a person
    ├── InvalidArgument           400 invalid-argument (the field is named when there is one)
    │   ├── PayloadTooLarge       413 invalid-argument
    │   ├── MethodNotAllowed      405 invalid-argument
    │   └── UnsupportedMediaType  415 invalid-argument
    ├── Unauthenticated           401 unauthenticated:no-credentials | :bad-credentials
    ├── PermissionDenied          403 permission-denied
    ├── NotFound                  404 not-found
    ├── Conflict                  409 failed-precondition (Idempotency-Key reused, other body)
    ├── RateLimited               429 resource-exhausted, with retry-after and quota headers
    └── Unavailable               502/503/504 (upstream failures, the store being busy)

Messages never carry a secret, a stack trace, or a hint that another team's object exists.
"""

from __future__ import annotations

from collections.abc import Mapping


class KeyplaneError(Exception):
    """Base of every error keyplane raises on purpose."""

    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(KeyplaneError):
    code = "invalid-argument"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        if field is not None and field not in message:
            message = f"{field}: {message}"
        super().__init__(message)
        self.field = field


class PayloadTooLarge(InvalidArgument):
    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body is larger than the limit of {limit} bytes.")
        self.limit = limit


class MethodNotAllowed(InvalidArgument):
    def __init__(self) -> None:
        super().__init__("Method not allowed on this route.")


class UnsupportedMediaType(InvalidArgument):
    pass


class Unauthenticated(KeyplaneError):
    def __init__(self, detail: str, message: str) -> None:
        super().__init__(message)
        self.code = f"unauthenticated:{detail}"

    @classmethod
    def no_credentials(cls) -> Unauthenticated:
        return cls("no-credentials", "No credentials presented.")

    @classmethod
    def bad_credentials(cls) -> Unauthenticated:
        return cls("bad-credentials", "The presented credentials are not valid.")


class PermissionDenied(KeyplaneError):
    code = "permission-denied"


class NotFound(KeyplaneError):
    code = "not-found"


class Conflict(KeyplaneError):
    code = "failed-precondition"


class RateLimited(KeyplaneError):
    """A limit said no. ``headers`` are the x-ratelimit-* answers the client should see."""

    code = "resource-exhausted"

    def __init__(
        self, message: str, *, retry_after: float, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = dict(headers or {})


class Unavailable(KeyplaneError):
    code = "unavailable"

    def __init__(self, message: str, *, status: int = 503) -> None:
        super().__init__(message)
        self.status = status


def http_status(error: KeyplaneError) -> int:
    """The HTTP status of an error, the same on both planes (each renders the body itself)."""
    match error:
        case MethodNotAllowed():
            return 405
        case UnsupportedMediaType():
            return 415
        case PayloadTooLarge():
            return 413
        case InvalidArgument():
            return 400
        case Unauthenticated():
            return 401
        case PermissionDenied():
            return 403
        case NotFound():
            return 404
        case Conflict():
            return 409
        case RateLimited():
            return 429
        case Unavailable():
            return error.status
    return 500
