"""The gateway's pool of model-server connections drops an idle connection before the server
would: a request sent on a connection the server closes that instant fails (a 502 seen in the
million group after a pause in traffic, with aiohttp's 60 s against uvicorn's 5 s)."""

from __future__ import annotations

import uvicorn

from keyplane.gateway.upstream import KEEPALIVE_SECONDS, AiohttpUpstream


def test_idle_connections_are_dropped_before_uvicorn_closes_them() -> None:
    # uvicorn fronts vLLM and keyplane's own model server; its idle keep-alive is the shortest
    # of the usual model servers' (nginx 75 s; Go's net/http, under Ollama, none).
    assert uvicorn.Config(app="x:y").timeout_keep_alive > KEEPALIVE_SECONDS


async def test_the_pool_uses_that_keep_alive() -> None:
    upstream = AiohttpUpstream()
    await upstream.start()
    try:
        session = upstream._session
        assert session is not None
        assert session.connector is not None
        assert session.connector._keepalive_timeout == KEEPALIVE_SECONDS
    finally:
        await upstream.close()
