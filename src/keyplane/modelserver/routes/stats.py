"""``GET /_stats`` (the counters) and ``DELETE /_stats`` (zero the totals)."""

from __future__ import annotations

from keyplane.asgi import Send, send_json_bytes
from keyplane.modelserver.http import encode, not_allowed
from keyplane.modelserver.state import ServerState

__all__ = ["stats"]


async def stats(state: ServerState, method: str, send: Send) -> None:
    counters = state.stats
    if method == "DELETE":
        # in_flight is live state, not a total: resetting it would make it go negative.
        counters.completed = counters.disconnected = counters.requests = 0
        counters.prompt_tokens = counters.completion_tokens = 0
    elif method != "GET":
        error = not_allowed(method, "/_stats", b"GET, DELETE")
        await send_json_bytes(send, error.status, error.body(), error.headers)
        return
    await send_json_bytes(send, 200, encode(counters))
