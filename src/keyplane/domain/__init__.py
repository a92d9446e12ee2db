"""The domain room: keyplane's objects and rules, with no I/O.

Owns teams, management keys, API keys and their secrets, audit events (``model``), ACL strings
(``acl``), field masks, page tokens, timestamps, key secrets and digests, and the error kinds every
plane maps to its own status codes (``errors``).

May import: the standard library and ``keyplane.domain`` only. Everything else imports it.
"""

from keyplane.domain.clock import Clock, ManualClock, SystemClock
from keyplane.domain.errors import (
    Conflict,
    InvalidArgument,
    KeyplaneError,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from keyplane.domain.model import ApiKey, AuditEvent, ManagementKey, Operator, SecretDigest, Team

__all__ = [
    "ApiKey",
    "AuditEvent",
    "Clock",
    "Conflict",
    "InvalidArgument",
    "KeyplaneError",
    "ManagementKey",
    "ManualClock",
    "NotFound",
    "Operator",
    "PermissionDenied",
    "RateLimited",
    "SecretDigest",
    "SystemClock",
    "Team",
    "Unauthenticated",
    "Unavailable",
]
