"""Idempotent creates: the first answer kept sealed for 24 h, for the same caller only.

A record is found by an HMAC of (team, management key, Idempotency-Key) under the deployment
secret, and its answer — the new key's secret included — is sealed (AES-GCM) with another key
derived the same way. The secret lives outside the database, so a copy of the database can
neither find a record by guessing Idempotency-Keys nor open one. Another management key of the
same team derives other values: replays are scoped to the caller. An answer is erased when its
API key is rotated or deleted; a replay then gets a 409, never a secret that no longer works.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from datetime import timedelta

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyplane.domain.errors import Conflict
from keyplane.services.context import Context
from keyplane.storage.unit_of_work import UnitOfWork

WINDOW = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked, and with which Idempotency-Key: what a record is bound to."""

    team_id: str
    management_key_id: str
    idempotency_key: str

    def _derive(self, secret: bytes, purpose: str) -> bytes:
        message = "\0".join(
            (purpose, self.team_id, self.management_key_id, self.idempotency_key)
        ).encode()
        return hmac.new(secret, message, hashlib.sha256).digest()

    def locator(self, secret: bytes) -> str:
        return self._derive(secret, "keyplane idempotency locator v2").hex()

    def sealing_key(self, secret: bytes) -> bytes:
        return self._derive(secret, "keyplane idempotency seal v2")


def replay(ctx: Context, uow: UnitOfWork, caller: Caller, request_digest: str) -> bytes | None:
    """The first answer to this caller's request, or None if there was none in the window."""
    secrets = (ctx.server_secret, *ctx.previous_secrets)
    by_locator = {caller.locator(secret): secret for secret in secrets}
    found = uow.idempotency.find(locators=list(by_locator), since=uow.now - WINDOW)
    if found is None:
        return None
    if found.request_digest != request_digest:
        raise Conflict("This Idempotency-Key was already used with a different request body.")
    if found.sealed is not None:
        key = caller.sealing_key(by_locator[found.locator])
        try:
            return AESGCM(key).decrypt(found.sealed[:12], found.sealed[12:], None)
        except InvalidTag:
            pass
    raise Conflict(
        "This Idempotency-Key created an API key that has since been rotated or deleted; "
        "its secret is no longer available. Use a new Idempotency-Key to create another."
    )


def remember(
    ctx: Context,
    uow: UnitOfWork,
    caller: Caller,
    *,
    api_key_id: str,
    request_digest: str,
    answer: bytes,
) -> None:
    nonce = os.urandom(12)
    sealed = nonce + AESGCM(caller.sealing_key(ctx.server_secret)).encrypt(nonce, answer, None)
    uow.idempotency.purge(before=uow.now - WINDOW)
    uow.idempotency.store(
        locator=caller.locator(ctx.server_secret),
        api_key_id=api_key_id,
        request_digest=request_digest,
        sealed=sealed,
        now=uow.now,
    )


def forget_answers(uow: UnitOfWork, api_key_id: str) -> None:
    """The key was rotated or deleted: its first secret is dead, so is any sealed copy of it."""
    uow.idempotency.erase_answers(api_key_id=api_key_id)


def purge_expired(ctx: Context) -> None:
    with ctx.write() as uow:
        uow.idempotency.purge(before=uow.now - WINDOW)
