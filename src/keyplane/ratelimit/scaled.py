"""A limiter whose windows are all multiplied by one factor: per-minute limits in seconds.

For tests and demos only (``limiter.window_scale`` in the settings): a qpm limit with a scale of
0.1 counts over 6 s, so a failover test can watch several of its windows go by in a bounded time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from keyplane.ratelimit.base import Decision, Limiter, RequestLimit, TokenLimit

__all__ = ["ScaledWindows"]


class ScaledWindows:
    """Wraps a :class:`~keyplane.ratelimit.Limiter`; every window is multiplied by ``scale``."""

    def __init__(self, inner: Limiter, scale: float) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.inner = inner
        self.scale = scale

    async def acquire(
        self, requests: Sequence[RequestLimit], tokens: Sequence[TokenLimit] = ()
    ) -> Decision:
        scale = self.scale
        return await self.inner.acquire(
            [replace(lim, window=lim.window * scale) for lim in requests],
            [replace(lim, window=lim.window * scale) for lim in tokens],
        )

    async def charge(self, tokens: Sequence[TokenLimit], amount: int) -> None:
        scale = self.scale
        await self.inner.charge([replace(lim, window=lim.window * scale) for lim in tokens], amount)

    async def aclose(self) -> None:
        await self.inner.aclose()
