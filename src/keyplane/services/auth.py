"""Who is calling the Management API: management keys, looked up by digest, and their ACLs."""

from __future__ import annotations

from dataclasses import dataclass

from keyplane.domain import acl, keysecrets
from keyplane.domain.errors import PermissionDenied, Unauthenticated
from keyplane.domain.model import ManagementKey
from keyplane.services.context import Context


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated management key, acting for its own team only."""

    key: ManagementKey

    @property
    def team_id(self) -> str:
        return self.key.team_id

    @property
    def user_id(self) -> str:
        return self.key.owner_user_id

    def require(self, rpc: str) -> None:
        if not acl.management_allows(self.key.acls, rpc):
            raise PermissionDenied(
                f"The management key {self.key.redacted} lacks the ACL "
                f"team-token:endpoint:{rpc} needed for {rpc}."
            )

    def require_team(self, team_id: str) -> None:
        if team_id != self.key.team_id:
            raise PermissionDenied(
                "The management key is not authorized to act on the team in the path."
            )


def authenticate(ctx: Context, authorization: str | None, *, here: bool = False) -> Principal:
    """The management key ``authorization`` presents. ``here``: read on the calling thread's own
    connection (``Context.read_here``; the event loop, on SQLite)."""
    if not authorization:
        raise Unauthenticated.no_credentials()
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated.bad_credentials()
    if not keysecrets.looks_like(token, ctx.management_key_prefix):
        raise Unauthenticated.bad_credentials()
    # One statement (the key joined with its team): on the loop, its own snapshot, no BEGIN.
    with ctx.read_here(one_statement=True) if here else ctx.read() as uow:
        key = uow.management_keys.live(keysecrets.digest(token))
    if key is None:
        raise Unauthenticated.bad_credentials()
    return Principal(key)


def reauthenticate(ctx: Context, key_id: str) -> Principal:
    """The management key a console session names, re-read now: revoked (or its team blocked)
    means the session is over, at once."""
    with ctx.read() as uow:
        key = uow.management_keys.live_by_id(key_id)
    if key is None:
        raise Unauthenticated.bad_credentials()
    return Principal(key)
