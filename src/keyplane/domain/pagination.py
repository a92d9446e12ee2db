"""Opaque, tamper-evident page tokens: a position in a stable order, signed with HMAC-SHA256.

A token is bound to what it pages over (the team and the query), so it cannot be replayed
against another list; a forged or altered token is a 400, never a wrong page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from keyplane.domain.errors import InvalidArgument

_MAX_TOKEN_LENGTH = 512


def encode_token(secret: bytes, scope: str, position: list[Any]) -> str:
    payload = json.dumps(position, separators=(",", ":")).encode()
    mac = hmac.new(secret, scope.encode() + b"\0" + payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac + payload).decode().rstrip("=")


def decode_token(secret: bytes, scope: str, token: str, *, field: str) -> list[Any]:
    invalid = InvalidArgument("is not a valid page token from this list", field=field)
    if len(token) > _MAX_TOKEN_LENGTH:
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        raise invalid from None
    # One token per position: b64decode ignores stray characters and the unused low bits of the
    # last one, so a token that is not exactly what encode_token wrote counts as altered.
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != token:
        raise invalid
    mac, payload = raw[:16], raw[16:]
    expected = hmac.new(secret, scope.encode() + b"\0" + payload, hashlib.sha256).digest()[:16]
    if len(mac) != 16 or not hmac.compare_digest(mac, expected):
        raise invalid
    try:
        position = json.loads(payload)
    except ValueError:
        raise invalid from None
    if not isinstance(position, list):
        raise invalid
    return position
