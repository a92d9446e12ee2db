"""API key use cases: create, list, update, rotate, delete, and read one.

Each mutation is one write transaction holding the change, its audit event, and a change-log row
with the next revision; secrets leave this module only inside the result of create and rotate.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from keyplane.domain import keysecrets
from keyplane.domain.acl import normalize_api_key_acls, parse_api_key_acl
from keyplane.domain.errors import InvalidArgument, NotFound
from keyplane.domain.fieldmask import parse_field_mask
from keyplane.domain.model import (
    ApiKey,
    SecretDigest,
    validate_bool,
    validate_int32_limit,
    validate_int64_limit,
    validate_name,
)
from keyplane.domain.pagination import decode_token, encode_token
from keyplane.domain.timefmt import parse_ts, to_micros
from keyplane.services import idempotency
from keyplane.services.auth import Principal
from keyplane.services.context import Context
from keyplane.storage.api_keys import ApiKeyQuery
from keyplane.usage import budgets

MAX_PAGE_SIZE = 1000
MAX_ACL_FILTERS = 32
TOMBSTONE_WINDOW = timedelta(hours=24)
DEFAULT_GRACE = timedelta(hours=24)
MAX_GRACE = timedelta(days=7)
MAX_IDEMPOTENCY_KEY = 255


def _not_found() -> NotFound:
    return NotFound("Cannot find API key")


@dataclass(frozen=True, slots=True)
class KeyWithSecret:
    key: ApiKey
    secret: str


@dataclass(frozen=True, slots=True)
class NewKeySpec:
    name: str
    acls: tuple[str, ...]
    qps: int | None
    qpm: int | None
    tpm: int | None
    expire_time: datetime | None
    budget_cents: int | None = None
    budget_period: str | None = None


def parse_new_key(body: Mapping[str, Any]) -> NewKeySpec:
    """Validate a CreateApiKey body (already JSON-decoded); every error names its field."""
    acls = body.get("acls") if "acls" in body else body.get("aclStrings", body.get("acl_strings"))
    expire = body.get("expireTime", body.get("expire_time"))
    budget_cents, budget_period = budgets.parse_budget(body.get("budget"), field="budget")
    return NewKeySpec(
        name=validate_name(body.get("name"), field="name"),
        acls=normalize_api_key_acls(acls, field="acls"),
        qps=validate_int32_limit(body.get("qps"), field="qps"),
        qpm=validate_int32_limit(body.get("qpm"), field="qpm"),
        tpm=validate_int64_limit(body.get("tpm"), field="tpm"),
        expire_time=None if expire is None else parse_ts(expire, field="expireTime"),
        budget_cents=budget_cents,
        budget_period=budget_period,
    )


def create_key(
    ctx: Context,
    *,
    principal: Principal,
    team_id: str,
    spec: NewKeySpec,
    idempotency_key: str | None = None,
    render: Callable[[KeyWithSecret], bytes] | None = None,
) -> tuple[KeyWithSecret | None, bytes | None]:
    """Create a key. With an ``idempotency_key``, a repeat of the same request within 24 h answers
    the first answer again (returned as bytes, secret included) and creates nothing.

    ``render`` turns the new key into the bytes of the answer, so the very bytes can be sealed.
    Returns ``(created, None)`` or ``(None, replayed_answer)``.
    """
    principal.require_team(team_id)
    request_digest = ""
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidArgument(
                f"must be 1-{MAX_IDEMPOTENCY_KEY} characters", field="Idempotency-Key"
            )
        request_digest = hashlib.sha256(
            json.dumps(
                [spec.name, spec.acls, spec.qps, spec.qpm, spec.tpm, str(spec.expire_time)]
            ).encode()
        ).hexdigest()
    secret = keysecrets.generate_secret(ctx.api_key_prefix)
    caller = (
        None
        if idempotency_key is None
        else idempotency.Caller(team_id, principal.key.key_id, idempotency_key)
    )
    with ctx.write() as uow:
        if caller is not None:
            answer = idempotency.replay(ctx, uow, caller, request_digest)
            if answer is not None:
                return None, answer
        key = ApiKey(
            api_key_id=str(uuid.uuid4()),
            team_id=team_id,
            user_id=principal.user_id,
            name=spec.name,
            redacted=keysecrets.redact(secret, ctx.api_key_prefix),
            create_time=uow.now,
            modify_time=uow.now,
            modified_by=principal.user_id,
            expire_time=spec.expire_time,
            qps=spec.qps,
            qpm=spec.qpm,
            tpm=spec.tpm,
            acl_strings=spec.acls,
            revision=uow.next_revision(),
            secrets=(SecretDigest(keysecrets.digest(secret)),),
            budget_cents=spec.budget_cents,
            budget_period=spec.budget_period,
        )
        key = uow.refine_key(key)  # born blocked while its team is
        uow.api_keys.add(key, now=uow.now)
        uow.key_changed(
            key,
            by=principal.user_id,
            operation="CreateApiKey",
            description=f"Created API key {key.name!r} ({key.redacted})",
        )
        result = KeyWithSecret(key, secret)
        if caller is not None and render is not None:
            idempotency.remember(
                ctx,
                uow,
                caller,
                api_key_id=key.api_key_id,
                request_digest=request_digest,
                answer=render(result),
            )
    return result, None


@dataclass(frozen=True, slots=True)
class Page:
    keys: list[ApiKey]
    next_token: str | None


def list_keys(
    ctx: Context,
    *,
    principal: Principal,
    team_id: str,
    page_size: int | None,
    page_token: str | None,
    acl_filters: Sequence[str] = (),
    active_only: bool = False,
    name_contains: str | None = None,
) -> Page:
    """``name_contains`` (the console's search; not a Management API parameter) keeps keys whose
    name holds that text, ignoring case."""
    principal.require_team(team_id)
    if name_contains is not None and len(name_contains) > 256:
        raise InvalidArgument("at most 256 characters", field="name")
    if page_size is not None and not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"must be between 1 and {MAX_PAGE_SIZE}", field="pageSize")
    if len(acl_filters) > MAX_ACL_FILTERS:
        raise InvalidArgument(f"at most {MAX_ACL_FILTERS} filters", field="aclFilters")
    for f in acl_filters:
        # An ACL string, as a key holds it: anything else could never match (and says so).
        parse_api_key_acl(f, field="aclFilters")
    filters = sorted(set(acl_filters))
    # The token is bound to the team and the query, so it only continues the list it came from.
    scope = json.dumps(["api-keys", team_id, filters, active_only, name_contains or ""])
    after: tuple[int, str] | None = None
    if page_token:
        position = decode_token(ctx.server_secret, scope, page_token, field="paginationToken")
        if (
            len(position) != 2
            or not isinstance(position[0], int)
            or not isinstance(position[1], str)
        ):
            raise InvalidArgument("is not a valid page token", field="paginationToken")
        after = (position[0], position[1])
    with ctx.read() as uow:
        keys = uow.api_keys.page(
            ApiKeyQuery(
                team_id=team_id,
                after=after,
                limit=None if page_size is None else page_size + 1,
                acl_filters=tuple(filters),
                active_at=uow.now if active_only else None,
                name_contains=name_contains or None,
            )
        )
    next_token = None
    if page_size is not None and len(keys) > page_size:
        keys = keys[:page_size]
        last = keys[-1]
        next_token = encode_token(
            ctx.server_secret, scope, [to_micros(last.create_time), last.api_key_id]
        )
    return Page(keys, next_token)


def get_key(ctx: Context, *, principal: Principal, api_key_id: str) -> ApiKey:
    with ctx.read() as uow:
        key = uow.api_keys.get(api_key_id, team_id=principal.team_id)
    if key is None:
        raise _not_found()
    return key


def _live_secrets(key: ApiKey, now: datetime) -> tuple[SecretDigest, ...]:
    return tuple(s for s in key.secrets if s.expire_time is None or s.expire_time > now)


def update_key(
    ctx: Context,
    *,
    principal: Principal,
    api_key_id: str,
    patch: Mapping[str, Any],
    field_mask: object,
    team_id: str | None = None,
) -> ApiKey:
    """Apply the masked fields of ``patch``; a masked field absent or null is cleared."""
    if team_id is not None:
        principal.require_team(team_id)
    paths = parse_field_mask(field_mask)

    def value(path: str, *aliases: str) -> Any:
        for name in (path, *aliases):
            if name in patch:
                return patch[name]
        return None

    changes: dict[str, Any] = {}
    if "name" in paths:
        changes["name"] = validate_name(value("name"), field="apiKey.name")
    if "aclStrings" in paths:
        changes["acl_strings"] = normalize_api_key_acls(
            value("aclStrings", "acls", "acl_strings"), field="apiKey.aclStrings"
        )
    if "qps" in paths:
        changes["qps"] = validate_int32_limit(value("qps"), field="apiKey.qps")
    if "qpm" in paths:
        changes["qpm"] = validate_int32_limit(value("qpm"), field="apiKey.qpm")
    if "tpm" in paths:
        changes["tpm"] = validate_int64_limit(value("tpm"), field="apiKey.tpm")
    if "disabled" in paths:
        raw = value("disabled")
        changes["disabled"] = False if raw is None else validate_bool(raw, field="apiKey.disabled")
    if "budget" in paths:
        changes["budget_cents"], changes["budget_period"] = budgets.parse_budget(
            value("budget"), field="apiKey.budget"
        )
    if "expireTime" in paths:
        raw = value("expireTime", "expire_time")
        changes["expire_time"] = None if raw is None else parse_ts(raw, field="apiKey.expireTime")
    return _mutate(
        ctx,
        principal=principal,
        api_key_id=api_key_id,
        operation="UpdateApiKey",
        change=lambda current, now: {**changes, "secrets": _live_secrets(current, now)},
        describe=lambda key: f"Updated API key {key.name!r}: {', '.join(sorted(paths))}",
    )


def rotate_key(
    ctx: Context,
    *,
    principal: Principal,
    api_key_id: str,
    body: Mapping[str, Any],
) -> KeyWithSecret:
    """A new secret under the same id; the old one lives until ``oldSecretExpireTime``."""
    now = ctx.clock.now()
    raw_old = body.get("oldSecretExpireTime", body.get("old_secret_expire_time"))
    old_expire = now + DEFAULT_GRACE
    if raw_old is not None:
        old_expire = parse_ts(raw_old, field="oldSecretExpireTime")
        if old_expire > now + MAX_GRACE:
            raise InvalidArgument("may be at most 7 days ahead", field="oldSecretExpireTime")
    raw_new = body.get("expireTime", body.get("expire_time"))
    new_expire = None if raw_new is None else parse_ts(raw_new, field="expireTime")
    secret = keysecrets.generate_secret(ctx.api_key_prefix)

    def change(current: ApiKey, at: datetime) -> dict[str, Any]:
        # Only the secret being replaced gets a grace period; older ones die now, so at most
        # two secrets are ever live.
        newest = next(iter(_live_secrets(current, at)), None)
        secrets = [SecretDigest(keysecrets.digest(secret))]
        if newest is not None and old_expire > at:
            secrets.append(SecretDigest(newest.digest, old_expire))
        return {
            "redacted": keysecrets.redact(secret, ctx.api_key_prefix),
            "expire_time": current.expire_time if new_expire is None else new_expire,
            "secrets": tuple(secrets),
        }

    key = _mutate(
        ctx,
        principal=principal,
        api_key_id=api_key_id,
        operation="RotateApiKey",
        change=change,
        describe=lambda key: f"Rotated API key {key.name!r}, now {key.redacted}",
        secret_replaced=True,
    )
    return KeyWithSecret(key, secret)


def _mutate(
    ctx: Context,
    *,
    principal: Principal,
    api_key_id: str,
    operation: str,
    change: Callable[[ApiKey, datetime], dict[str, Any]],
    describe: Callable[[ApiKey], str],
    secret_replaced: bool = False,
) -> ApiKey:
    """Read the team's key, apply ``change``, and commit it with its revision and audit event.
    ``secret_replaced``: any sealed idempotent answer holding the old secret is erased."""
    with ctx.write() as uow:
        current = uow.api_keys.get(api_key_id, team_id=principal.team_id)
        if current is None:
            raise _not_found()
        key = replace(
            current,
            **change(current, uow.now),
            modify_time=uow.now,
            modified_by=principal.user_id,
            revision=uow.next_revision(),
        )
        key = uow.refine_key(key)  # a new budget blocks or unblocks at once
        uow.api_keys.replace(key, now=uow.now)
        if secret_replaced:
            idempotency.forget_answers(uow, key.api_key_id)
        uow.key_changed(key, by=principal.user_id, operation=operation, description=describe(key))
    return key


def delete_key(ctx: Context, *, principal: Principal, api_key_id: str) -> None:
    with ctx.write() as uow:
        current = uow.api_keys.get(api_key_id, team_id=principal.team_id)
        if current is None:
            raise _not_found()
        key = replace(current, revision=uow.next_revision())
        uow.api_keys.delete(key, now=uow.now)
        uow.api_keys.purge_tombstones(before=uow.now - TOMBSTONE_WINDOW)
        idempotency.forget_answers(uow, key.api_key_id)
        uow.key_changed(
            key,
            by=principal.user_id,
            operation="DeleteApiKey",
            description=f"Deleted API key {key.name!r} ({key.redacted})",
            deleted=True,
        )
