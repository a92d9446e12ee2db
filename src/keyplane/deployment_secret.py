"""The deployment secret: the key that seals idempotent answers and signs pagination tokens and
console sessions. It lives outside the database, so a copy of the database opens nothing.

Sources, first found wins: ``KEYPLANE_SERVER_SECRET`` (64 hex digits), else the file named by
``server_secret_file`` (default: ``<data_dir>.secret``, beside the data directory, not in it),
created 0600 on first start. ``KEYPLANE_SERVER_SECRET_PREVIOUS`` / ``<file>.previous`` hold the
secret before a rotation, still accepted for 24 h (docs/deployment.md, "Rotating the secret").
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from keyplane.private_files import create_private_once, tighten
from keyplane.settings import Settings

SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class DeploymentSecret:
    current: bytes
    #: Secrets rotated out, still accepted when opening what they sealed.
    previous: tuple[bytes, ...] = ()

    @property
    def all(self) -> tuple[bytes, ...]:
        return (self.current, *self.previous)


def fingerprint(secret: bytes) -> str:
    """What the database records to notice a wrong secret; it reveals nothing of the secret."""
    return hmac.new(secret, b"keyplane deployment secret fingerprint", hashlib.sha256).hexdigest()


def secret_path(settings: Settings) -> Path:
    if settings.server_secret_file is not None:
        return settings.server_secret_file
    data_dir = settings.data_dir.resolve()
    return data_dir.with_name(data_dir.name + ".secret")


def _parse(value: str, where: str) -> bytes:
    text = value.strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != SECRET_BYTES:
        raise SystemExit(f"{where}: the deployment secret must be {2 * SECRET_BYTES} hex digits")
    return raw


def load(settings: Settings, *, create: bool = True) -> DeploymentSecret:
    """The deployment's secret, made (in the file) on first use when ``create``."""
    previous: list[bytes] = []
    if settings.server_secret_previous is not None:
        previous.append(
            _parse(settings.server_secret_previous.get_secret_value(), "server_secret_previous")
        )
    if settings.server_secret is not None:
        current = _parse(settings.server_secret.get_secret_value(), "KEYPLANE_SERVER_SECRET")
        return DeploymentSecret(current, tuple(previous))
    path = secret_path(settings)
    if create and not path.exists():
        create_private_once(path, secrets.token_hex(SECRET_BYTES) + "\n")
    if not path.exists():
        raise SystemExit(f"no deployment secret: set KEYPLANE_SERVER_SECRET or create {path}")
    tighten(path)
    current = _parse(path.read_text(), str(path))
    old = path.with_name(path.name + ".previous")
    if old.exists():
        tighten(old)
        previous.append(_parse(old.read_text(), str(old)))
    return DeploymentSecret(current, tuple(previous))


def generate() -> str:
    """A fresh secret, as the file or the environment variable holds it."""
    return secrets.token_hex(SECRET_BYTES)
