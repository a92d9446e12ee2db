"""The gateway room: a cluster's plain-ASGI inference proxy that enforces API keys.

Owns the in-memory and on-disk replica of what enforcement needs (``replica``), following the
control plane's feed (``sync``), authenticating keys and checking ACLs (``app``), rate limits,
relaying requests and streams to the upstream and counting tokens (``inference``), and its own
error map (``http``). It holds digests only, never a secret.

May import: ``keyplane.domain``, ``keyplane.ratelimit``, ``keyplane.propagation.wire``,
``keyplane.catalog``, ``keyplane.settings``, ``keyplane.httpbounds``, ``keyplane.asgi`` and
``keyplane.private_files``. Never storage or services: it reaches the control
plane over HTTP only.
"""

from keyplane.gateway.app import Gateway, GatewayConfig
from keyplane.gateway.inference import Inference
from keyplane.gateway.server import GatewayProcess

__all__ = [
    "Gateway",
    "GatewayConfig",
    "GatewayProcess",
    "Inference",
]
