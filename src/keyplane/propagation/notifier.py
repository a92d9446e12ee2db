"""Wakes long-polling feed followers the moment a change commits, with no fixed polling delay.

Commits happen on worker threads (the Management API's sync routes); followers wait on the event
loop. ``notify`` is thread-safe; ``wait_beyond`` returns as soon as the newest committed revision
passes the caller's, or on timeout. A slow periodic re-read of the store also wakes followers, so
commits made by another process (the admin CLI, a second replica) are never missed.
"""

from __future__ import annotations

import asyncio
import threading


class ChangeNotifier:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def latest(self) -> int:
        return self._latest

    def bind(self, loop: asyncio.AbstractEventLoop, latest: int) -> None:
        self._loop = loop
        self.notify(latest)

    def notify(self, revision: int) -> None:
        with self._lock:
            if revision <= self._latest:
                return
            self._latest = revision
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        else:
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_beyond(self, revision: int, within: float) -> int:
        """Wait until a revision above ``revision`` has committed; return the newest known."""
        if self._latest > revision:
            return self._latest
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, within)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)
        return self._latest
