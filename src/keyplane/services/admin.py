"""Operator use cases (the ``keyplane admin`` CLI): teams and management keys.

These stand for the hosted console's "Settings → Management Keys". Secrets are returned once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from keyplane.domain import keysecrets
from keyplane.domain.acl import MANAGEMENT_NAMESPACE, RPCS, WILDCARD, parse_management_acl
from keyplane.domain.errors import InvalidArgument, NotFound, Unauthenticated
from keyplane.domain.model import ManagementKey, Operator, Team, validate_name
from keyplane.services.context import Context

ALL_RPCS: tuple[str, ...] = tuple(f"{MANAGEMENT_NAMESPACE}:endpoint:{rpc}" for rpc in RPCS)


def create_team(ctx: Context, *, name: str) -> Team:
    team = Team(
        team_id=str(uuid.uuid4()),
        name=validate_name(name, field="name"),
        create_time=ctx.clock.now(),
    )
    with ctx.write() as uow:
        uow.teams.add(team)
    return team


def list_teams(ctx: Context) -> list[Team]:
    with ctx.read() as uow:
        return uow.teams.all()


def find_team(ctx: Context, team_ref: str) -> Team:
    with ctx.read() as uow:
        team = uow.teams.find(team_ref)
    if team is None:
        raise NotFound(f"no team with id or name {team_ref!r}")
    return team


@dataclass(frozen=True, slots=True)
class NewManagementKey:
    key: ManagementKey
    secret: str


def create_management_key(
    ctx: Context,
    *,
    team_id: str,
    name: str,
    acls: list[str] | None = None,
    owner_user_id: str | None = None,
) -> NewManagementKey:
    """A management key for ``team_id``; ACLs default to every RPC, listed one by one."""
    chosen = tuple(acls) if acls else ALL_RPCS
    for item in chosen:
        parse_management_acl(item)
    if owner_user_id is not None:
        try:
            owner_user_id = str(uuid.UUID(owner_user_id))
        except ValueError:
            raise InvalidArgument("must be a UUID", field="owner_user_id") from None
    name = validate_name(name, field="name")
    secret = keysecrets.generate_secret(ctx.management_key_prefix)
    with ctx.write() as uow:
        if uow.teams.get(team_id) is None:
            raise NotFound(f"no team {team_id}")
        key = ManagementKey(
            key_id=str(uuid.uuid4()),
            team_id=team_id,
            name=name,
            owner_user_id=owner_user_id or str(uuid.uuid4()),
            acls=chosen,
            redacted=keysecrets.redact(secret, ctx.management_key_prefix),
            create_time=uow.now,
            modify_time=uow.now,
        )
        uow.management_keys.add(key, keysecrets.digest(secret))
        uow.record(
            team_id=team_id,
            user_id=key.owner_user_id,
            operation="CreateManagementKey",
            entity_type="MANAGEMENT_KEY",
            entity_id=key.key_id,
            description=f"Created management key {key.name!r} ({key.redacted})",
        )
    return NewManagementKey(key, secret)


def list_management_keys(ctx: Context, *, team_id: str | None = None) -> list[ManagementKey]:
    with ctx.read() as uow:
        return uow.management_keys.all(team_id)


def revoke_management_key(ctx: Context, *, key_id: str) -> ManagementKey:
    with ctx.write() as uow:
        keys = [k for k in uow.management_keys.all(None) if k.key_id == key_id]
        if not keys or not uow.management_keys.revoke(key_id, uow.now):
            raise NotFound(f"no live management key {key_id}")
        key = keys[0]
        uow.record(
            team_id=key.team_id,
            user_id=key.owner_user_id,
            operation="RevokeManagementKey",
            entity_type="MANAGEMENT_KEY",
            entity_id=key.key_id,
            description=f"Revoked management key {key.name!r} ({key.redacted})",
        )
    return key


# -- operators ------------------------------------------------------------------------------------

#: Operator credentials never pass for management or API keys, nor the other way round.
OPERATOR_PREFIX = "kp-operator-"


@dataclass(frozen=True, slots=True)
class NewOperator:
    operator: Operator
    secret: str


def create_operator(ctx: Context, *, name: str) -> NewOperator:
    """A console credential for an operator; the secret is returned once, its digest stored."""
    secret = keysecrets.generate_secret(OPERATOR_PREFIX)
    operator = Operator(
        operator_id=str(uuid.uuid4()),
        name=validate_name(name, field="name"),
        redacted=keysecrets.redact(secret, OPERATOR_PREFIX),
        create_time=ctx.clock.now(),
    )
    with ctx.write() as uow:
        uow.operators.add(operator, keysecrets.digest(secret))
    return NewOperator(operator, secret)


def list_operators(ctx: Context) -> list[Operator]:
    with ctx.read() as uow:
        return uow.operators.all()


def revoke_operator(ctx: Context, *, operator_id: str) -> None:
    with ctx.write() as uow:
        if not uow.operators.revoke(operator_id, uow.now):
            raise NotFound(f"no live operator {operator_id}")


def authenticate_operator(ctx: Context, secret: str) -> Operator:
    if not keysecrets.looks_like(secret, OPERATOR_PREFIX):
        raise Unauthenticated.bad_credentials()
    with ctx.read() as uow:
        operator = uow.operators.live(digest=keysecrets.digest(secret))
    if operator is None:
        raise Unauthenticated.bad_credentials()
    return operator


def reauthenticate_operator(ctx: Context, operator_id: str) -> Operator:
    """The operator a console session names, re-read now: revoked ends the session."""
    with ctx.read() as uow:
        operator = uow.operators.live(operator_id=operator_id)
    if operator is None:
        raise Unauthenticated.bad_credentials()
    return operator


__all__ = [
    "ALL_RPCS",
    "OPERATOR_PREFIX",
    "WILDCARD",
    "NewManagementKey",
    "NewOperator",
    "authenticate_operator",
    "create_management_key",
    "create_operator",
    "create_team",
    "find_team",
    "list_management_keys",
    "list_operators",
    "list_teams",
    "reauthenticate_operator",
    "revoke_management_key",
    "revoke_operator",
]
