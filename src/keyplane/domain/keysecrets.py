"""Key secrets: how they are made, digested, and shown redacted. Only digests are ever stored."""

from __future__ import annotations

import hashlib
import re
import secrets as _secrets
import string

SECRET_LENGTH = 80
_ALPHABET = string.ascii_letters + string.digits
_UNBIASED = 256 - 256 % len(_ALPHABET)  # 248: bytes at or above it would favour some letters
#: ``bytes.translate``'s table and deletions: a byte below 248 becomes ``_ALPHABET[byte % 62]``,
#: one at or above it is dropped.
_PICK = bytes(ord(_ALPHABET[b % len(_ALPHABET)]) if b < _UNBIASED else 0 for b in range(256))
_DROP = bytes(range(_UNBIASED, 256))


def generate_secret(prefix: str) -> str:
    """``prefix`` + 80 characters of [A-Za-z0-9] from the OS CSPRNG (about 476 bits)."""
    # Rejection sampling over whole random bytes: uniform over the 62 characters, and one
    # call into the OS CSPRNG instead of eighty. The mapping and the dropping are one
    # ``bytes.translate`` (~1 µs; a loop over the bytes in Python took ~20).
    body = b""
    while len(body) < SECRET_LENGTH:
        body += _secrets.token_bytes(SECRET_LENGTH + 16).translate(_PICK, _DROP)
    return prefix + body[:SECRET_LENGTH].decode("ascii")


def digest(secret: str) -> str:
    """The SHA-256 hex digest under which a secret is stored and looked up.

    A plain hash is enough here: the secrets are 476-bit random strings, not passwords, so there is
    nothing to brute-force, and a fast digest keeps the gateway's lookup cheap.
    """
    return digest_bytes(secret.encode())


#: The hash of :func:`digest`; the gateway's hot path calls it directly (``DIGEST(b).digest()``).
DIGEST = hashlib.sha256


def digest_bytes(secret: bytes) -> str:
    """``digest`` of a secret still in the bytes it came in (the gateway's header, undecoded)."""
    return DIGEST(secret).hexdigest()


def digest_raw(secret: bytes) -> bytes:
    """``digest_bytes`` as the 32 bytes themselves (``bytes.fromhex`` of it), which the gateway's
    replica is keyed by: no hex string built per request."""
    return DIGEST(secret).digest()


def redact(secret: str, prefix: str) -> str:
    """``xai-...abcd``: the prefix and the last four characters."""
    return f"{prefix}...{secret[-4:]}"


_BODY = re.compile(f"[A-Za-z0-9]{{{SECRET_LENGTH}}}")


def looks_like(secret: str, prefix: str) -> bool:
    """Cheap shape check before a lookup, so malformed input never reaches the store."""
    return secret.startswith(prefix) and _BODY.fullmatch(secret, len(prefix)) is not None
