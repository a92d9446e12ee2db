"""Propagation: the control plane's change feed, acks and status; the wire format gateways share.

Server side (``feed``, ``routes``, ``notifier``) runs in the control plane; the client side
(``keyplane.gateway.sync`` and ``keyplane.gateway.replica``) runs in each gateway. They share only
the wire format in ``wire``, which is why this package's ``__init__`` imports nothing: a gateway
importing ``keyplane.propagation.wire`` must not load the control plane.

May import: ``keyplane.services``, ``keyplane.storage``, ``keyplane.domain``,
``keyplane.settings``.
"""

__all__: list[str] = []
