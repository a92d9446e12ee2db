"""The errors every layer raises, and nothing else. What HTTP status each one is belongs to the
plane that answers it: each has one error map (``keyplane.control.errors``,
``keyplane.gateway.http``).

    KeyplaneError                 base: a stable ``code`` plus a message fit for a person
    ├── InvalidArgument           invalid-argument (the field is named when there is one)
    │   ├── PayloadTooLarge       invalid-argument, the body past a limit
    │   ├── MethodNotAllowed      invalid-argument, a method the route does not answer
    │   └── UnsupportedMediaType  invalid-argument, a body that is not JSON
    ├── Unauthenticated           unauthenticated:no-credentials | :bad-credentials
    ├── PermissionDenied          permission-denied
    ├── NotFound                  not-found
    ├── Conflict                  failed-precondition (Idempotency-Key reused, other body)
    ├── RateLimited               resource-exhausted, with retry-after and quota headers
    └── Unavailable               unavailable (the store out of reach; the gateway's upstream)

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
