"""The objects of the problem: teams, management keys, API keys and their secrets, audit events.

Plain frozen dataclasses with aware UTC datetimes; no I/O. One wire shape lives here on purpose:
:func:`enforcement_view`, the JSON a key's change-log row carries to the gateways, since the
services write it in the same transaction as the key. The Management API's JSON is rendered by
``keyplane.control.render``; storage maps rows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keyplane.domain.errors import InvalidArgument
from keyplane.domain.timefmt import format_ts

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
MAX_NAME_LENGTH = 256
# ASCII digits only: str.isdigit() also says yes to "²" and "٣", which int() refuses or reads
# as something the caller did not write. 20 digits hold any int64 and stay far from int()'s limit.
_INTEGER_STRING = re.compile(r"-?[0-9]{1,20}")


@dataclass(frozen=True, slots=True)
class Team:
    team_id: str
    name: str
    create_time: datetime
    blocked: bool = False


@dataclass(frozen=True, slots=True)
class ManagementKey:
    key_id: str
    team_id: str
    name: str
    owner_user_id: str
    acls: tuple[str, ...]
    redacted: str
    create_time: datetime
    modify_time: datetime
    revoke_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Operator:
    """Someone who runs the deployment; signs in to the console's operators' view."""

    operator_id: str
    name: str
    redacted: str
    create_time: datetime
    revoke_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class SecretDigest:
    """One live secret of an API key. ``expire_time`` is set on an old secret during rotation."""

    digest: str
    expire_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    api_key_id: str
    team_id: str
    user_id: str
    name: str
    redacted: str
    create_time: datetime
    modify_time: datetime
    modified_by: str
    disabled: bool = False
    expire_time: datetime | None = None
    qps: int | None = None
    qpm: int | None = None
    tpm: int | None = None
    acl_strings: tuple[str, ...] = ()
    revision: int = 0
    secrets: tuple[SecretDigest, ...] = field(default=(), repr=False)
    #: keyplane's own per-key budget (``keyplane.usage``): cents per ``budget_period``.
    budget_cents: int | None = None
    budget_period: str | None = None  # DAY | WEEK | MONTH (UTC)
    #: While set and in the future, spend blocks the key (its budget) or its team (the limit).
    budget_blocked_until: datetime | None = None
    team_blocked_until: datetime | None = None

    def is_expired(self, now: datetime) -> bool:
        return self.expire_time is not None and self.expire_time <= now


@dataclass(frozen=True, slots=True)
class AuditEvent:
    event_id: str
    team_id: str
    event_time: datetime
    user_id: str
    operation: str
    entity_type: str
    entity_id: str
    description: str


def validate_name(value: object, *, field: str = "name") -> str:
    if not isinstance(value, str):
        raise InvalidArgument("must be a string", field=field)
    if not value.strip():
        raise InvalidArgument("must not be empty", field=field)
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"must be at most {MAX_NAME_LENGTH} characters", field=field)
    return value


def validate_int32_limit(value: object, *, field: str) -> int | None:
    """``qps``/``qpm``: a JSON number (or a digit string, to be liberal), 0..2^31-1, or null."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidArgument("must be an integer, not a boolean", field=field)
    if isinstance(value, str) and _INTEGER_STRING.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise InvalidArgument("must be an integer", field=field)
    if value < 0:
        raise InvalidArgument("must not be negative", field=field)
    if value > INT32_MAX:
        raise InvalidArgument(f"must be at most {INT32_MAX}", field=field)
    return value


def validate_int64_limit(value: object, *, field: str) -> int | None:
    """``tpm``: a 64-bit integer that travels as a string; an integer is accepted too."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidArgument("must be an integer string, not a boolean", field=field)
    if isinstance(value, str):
        text = value.strip()
        if not _INTEGER_STRING.fullmatch(text):
            raise InvalidArgument(f"{value!r} is not an integer string", field=field)
        value = int(text)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise InvalidArgument("must be an integer string", field=field)
    if value < 0:
        raise InvalidArgument("must not be negative", field=field)
    if value > INT64_MAX:
        raise InvalidArgument(f"must be at most {INT64_MAX}", field=field)
    return value


def validate_bool(value: object, *, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidArgument("must be true or false", field=field)


def enforcement_view(key: ApiKey) -> dict[str, Any]:
    """What a gateway needs to enforce ``key``, as a JSON-ready dict; the change log carries it.

    Digests only (two during a rotation's grace period), never a secret.
    """

    def ts(value: datetime | None) -> str | None:
        return None if value is None else format_ts(value)

    return {
        "apiKeyId": key.api_key_id,
        "teamId": key.team_id,
        "userId": key.user_id,
        "name": key.name,
        "redactedApiKey": key.redacted,
        "createTime": ts(key.create_time),
        "modifyTime": ts(key.modify_time),
        "modifiedBy": key.modified_by,
        "disabled": key.disabled,
        "expireTime": ts(key.expire_time),
        "qps": key.qps,
        "qpm": key.qpm,
        "tpm": key.tpm,
        "acls": list(key.acl_strings),
        "secrets": [{"digest": s.digest, "expireTime": ts(s.expire_time)} for s in key.secrets],
        "revision": key.revision,
        "apiKeyBlockedUntil": ts(key.budget_blocked_until),
        "teamBlockedUntil": ts(key.team_blocked_until),
    }


#: An enforcement view's fields in the order of a row (the feed's compact snapshot, a gateway's
#: replica): the id and the secrets first, what a gateway indexes. In a row, ``secrets`` is a
#: list of ``[digest, expireTime]`` pairs.
ROW_FIELDS = (
    "apiKeyId",
    "secrets",
    "teamId",
    "userId",
    "name",
    "redactedApiKey",
    "createTime",
    "modifyTime",
    "modifiedBy",
    "disabled",
    "expireTime",
    "qps",
    "qpm",
    "tpm",
    "acls",
    "revision",
    "apiKeyBlockedUntil",
    "teamBlockedUntil",
)


def view_to_row(view: Mapping[str, Any]) -> list[Any]:
    """An enforcement view as a row (``ROW_FIELDS`` order)."""
    row = [view.get(name) for name in ROW_FIELDS]
    row[1] = [[s["digest"], s.get("expireTime")] for s in view.get("secrets") or ()]
    return row


def row_to_view(row: Sequence[Any]) -> dict[str, Any]:
    """The enforcement view a row holds."""
    view = dict(zip(ROW_FIELDS, row, strict=True))
    view["secrets"] = [{"digest": d, "expireTime": e} for d, e in row[1]]
    return view
