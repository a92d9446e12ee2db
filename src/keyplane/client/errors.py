"""Every exception the SDK raises, under one base:

    KeyplaneClientError          base of everything below
    ├── ConfigurationError       no base URL or no management key (argument or environment)
    ├── TransportError           no answer: connection refused or dropped, timeout (after retries)
    ├── PropagationTimeout       wait_propagated gave up; ``.propagation`` is the last status seen
    └── APIError                 the server answered an error envelope ``{"code", "error"}``;
        │                        ``.status``, ``.code`` (as sent), ``.message``, ``.detail``
        ├── InvalidArgument      400 / 405 / 413 / 415 invalid-argument
        ├── Unauthenticated      401 unauthenticated[:no-credentials | :bad-credentials]
        ├── PermissionDenied     403 permission-denied
        ├── NotFound             404 not-found
        ├── FailedPrecondition   409 failed-precondition (Idempotency-Key reused, other body)
        ├── RateLimited          429 resource-exhausted; ``.retry_after`` in seconds (or None)
        ├── Unavailable          502 / 503 / 504 unavailable
        └── InternalError        500 internal, and any status or code this SDK does not know

Catch ``APIError`` for "the server said no", ``KeyplaneClientError`` for "it did not work".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keyplane.client.types import Propagation


class KeyplaneClientError(Exception):
    """Base of every exception the SDK raises."""


class ConfigurationError(KeyplaneClientError, ValueError):
    """The client lacks a base URL or a management key."""


class TransportError(KeyplaneClientError):
    """No HTTP answer came back (after the retries the call allowed)."""


class PropagationTimeout(KeyplaneClientError, TimeoutError):
    """``wait_propagated`` ran out of time; ``propagation`` is the last status it saw."""

    def __init__(self, api_key_id: str, timeout: float, propagation: Propagation | None) -> None:
        pending = [] if propagation is None else propagation.pending()
        super().__init__(
            f"API key {api_key_id} not propagated after {timeout:g}s"
            + (f" (pending: {', '.join(pending)})" if pending else "")
        )
        self.api_key_id = api_key_id
        self.propagation = propagation


class APIError(KeyplaneClientError):
    """The server answered with an error envelope.

    ``code`` is the envelope's code as sent (``unauthenticated:bad-credentials``); ``detail`` is
    the part after the colon, if any; ``message`` is the text meant for a person.
    """

    #: The code this class stands for (the part before any ``:detail``).
    CODE = "internal"

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = code.partition(":")[2] or None


class InvalidArgument(APIError):
    CODE = "invalid-argument"


class Unauthenticated(APIError):
    CODE = "unauthenticated"


class PermissionDenied(APIError):
    CODE = "permission-denied"


class NotFound(APIError):
    CODE = "not-found"


class FailedPrecondition(APIError):
    CODE = "failed-precondition"


class RateLimited(APIError):
    """429: ``retry_after`` is the server's Retry-After in seconds, when it sent one."""

    CODE = "resource-exhausted"

    def __init__(
        self, status: int, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(status, code, message)
        self.retry_after = retry_after


class Unavailable(APIError):
    CODE = "unavailable"


class InternalError(APIError):
    CODE = "internal"


_BY_CODE: dict[str, type[APIError]] = {
    cls.CODE: cls
    for cls in (
        InvalidArgument,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        FailedPrecondition,
        RateLimited,
        Unavailable,
        InternalError,
    )
}
_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    405: InvalidArgument,
    409: FailedPrecondition,
    413: InvalidArgument,
    415: InvalidArgument,
    429: RateLimited,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def error_for(status: int, code: str | None, message: str, retry_after: float | None) -> APIError:
    """The exception for an error answer: by its code, else by its status."""
    cls = _BY_CODE.get((code or "").partition(":")[0]) or _BY_STATUS.get(status, InternalError)
    code = code or cls.CODE
    if cls is RateLimited:
        return RateLimited(status, code, message, retry_after)
    return cls(status, code, message)
