"""Propagation: the control plane's change feed, the gateways' sync client, acks and status.

Server side (``feed``, ``routes``, ``notifier``) runs in the control plane; ``sync`` and
``replica`` run in each gateway. They share only the wire format in ``wire``.
"""
