"""What every use case needs, bundled once at start: the store, the clock, and a few settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from keyplane.domain.clock import Clock, SystemClock
from keyplane.storage.db import Database


@dataclass(frozen=True)
class Context:
    db: Database
    #: The deployment secret, kept outside the database (keyplane.deployment_secret).
    server_secret: bytes
    clock: Clock = field(default_factory=SystemClock)
    api_key_prefix: str = "xai-"
    management_key_prefix: str = "xai-mgmt-"
    #: A gateway silent for longer is not live (propagation status, ``admin clusters``).
    gateway_liveness: timedelta = timedelta(seconds=15)
    #: Called after a transaction that appended to the change log has committed.
    on_commit: Callable[[int], None] = field(default=lambda _revision: None)
    #: Secrets rotated out, still accepted when opening what they sealed.
    previous_secrets: tuple[bytes, ...] = ()
