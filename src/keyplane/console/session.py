"""Console sessions: a sealed cookie that names a credential by id, never holds its secret.

The cookie is ``base64url(nonce || AES-GCM(payload))`` under a key derived from the server's
sealing secret (kept outside the database), with the cookie's kind as associated data so a team
session can never pass for an operator one. The payload is ``{"i": credential id, "t": team id,
"e": expiry (unix seconds), "c": CSRF token}``. Nothing is stored server-side: every request
re-loads the credential by id and refuses it once revoked, so revocation ends the session at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: How long a sign-in lasts, whatever happens in between.
SESSION_TTL_S = 8 * 3600
#: Cookies larger than this are not ours; refuse before decoding.
MAX_COOKIE = 1024

TEAM = "kp_session"
OPERATOR = "kp_operator"
#: The sign-in forms' double-submit token, set before there is a session.
PRE = "kp_signin"


@dataclass(frozen=True, slots=True)
class Session:
    kind: str
    credential_id: str
    team_id: str
    expires: int
    csrf: str


class Sealer:
    """Seals and opens session cookies with a key derived from the server's sealing secret."""

    def __init__(self, server_secret: bytes, previous: tuple[bytes, ...] = ()) -> None:
        """Seals under ``server_secret``; opens under it or a ``previous`` one, so rotating the
        deployment secret does not sign everyone out at once (new cookies use the new one)."""
        self._aead, *older = [
            AESGCM(hmac.new(s, b"keyplane console session v1", hashlib.sha256).digest())
            for s in (server_secret, *previous)
        ]
        self._openers = (self._aead, *older)

    def new(self, kind: str, credential_id: str, team_id: str = "") -> tuple[Session, str]:
        session = Session(
            kind=kind,
            credential_id=credential_id,
            team_id=team_id,
            expires=int(time.time()) + SESSION_TTL_S,
            csrf=secrets.token_urlsafe(24),
        )
        return session, self.seal(session)

    def seal(self, session: Session) -> str:
        payload = json.dumps(
            {
                "i": session.credential_id,
                "t": session.team_id,
                "e": session.expires,
                "c": session.csrf,
            },
            separators=(",", ":"),
        ).encode()
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, payload, session.kind.encode())
        return base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def open(self, kind: str, cookie: str | None) -> Session | None:
        """The session in ``cookie``, or None if absent, forged, of another kind, or expired."""
        if not cookie or len(cookie) > MAX_COOKIE:
            return None
        try:
            raw = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))
        except (ValueError, binascii.Error):
            return None
        for aead in self._openers:
            try:
                plain = aead.decrypt(raw[:12], raw[12:], kind.encode())
            except (InvalidTag, ValueError):
                continue
            return _session(kind, plain)
        return None


def _session(kind: str, plain: bytes) -> Session | None:
    """The payload of an authentic cookie, unless malformed or expired."""
    try:
        payload = json.loads(plain)
        session = Session(
            kind=kind,
            credential_id=str(payload["i"]),
            team_id=str(payload["t"]),
            expires=int(payload["e"]),
            csrf=str(payload["c"]),
        )
    except (ValueError, KeyError, TypeError):
        return None
    if session.expires <= time.time():
        return None
    return session


def same_token(expected: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(expected.encode(), presented.encode())
