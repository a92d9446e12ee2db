"""The gateway room: a cluster's plain-ASGI inference proxy that enforces API keys.

Owns the in-memory and on-disk replica of what enforcement needs (``replica``), following the
control plane's feed (``sync``), authenticating keys and routing (``app``), the inference routes
(``inference``) and, each in its module, what they do: the ACL and limits decision
(``admission``), forwarding and relaying answers and streams (``relay``) through the one seam to
the model servers (``upstream``: an ``Upstream`` protocol; by default ``h1upstream``'s HTTP/1.1
client on asyncio and httptools, aiohttp for ``https://``), and what a request costs, its tokens
charged and its usage metered (``accounting``); and its own error map (``http``). It holds
digests only, never a secret.

May import: ``keyplane.domain``, ``keyplane.ratelimit``, ``keyplane.propagation.wire``,
``keyplane.catalog``, ``keyplane.settings``, ``keyplane.httpbounds``, ``keyplane.asgi`` and
``keyplane.private_files``. Never storage or services: it reaches the control
plane over HTTP only.
"""

from keyplane.gateway.app import Gateway, GatewayConfig
from keyplane.gateway.h1upstream import H1Upstream
from keyplane.gateway.inference import Inference
from keyplane.gateway.server import GatewayProcess
from keyplane.gateway.upstream import AiohttpUpstream, Upstream, UpstreamError, UpstreamResponse

__all__ = [
    "AiohttpUpstream",
    "Gateway",
    "GatewayConfig",
    "GatewayProcess",
    "H1Upstream",
    "Inference",
    "Upstream",
    "UpstreamError",
    "UpstreamResponse",
]
