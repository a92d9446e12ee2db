"""The per-key limits the limiter tests build, one counter each (``key:1:...`` unless given)."""

from __future__ import annotations

from keyplane.ratelimit import RequestLimit, TokenLimit


def qps(limit: int, counter: str = "key:1:qps") -> RequestLimit:
    return RequestLimit("qps", counter, limit, 1.0)


def qpm(limit: int, counter: str = "key:1:qpm") -> RequestLimit:
    return RequestLimit("qpm", counter, limit, 60.0)


def tpm(limit: int, counter: str = "key:1:tpm") -> TokenLimit:
    return TokenLimit("tpm", counter, limit)
