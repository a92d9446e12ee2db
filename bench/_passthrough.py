"""The reference the gateway is measured against: the least a Python inference proxy can do.

Raw ASGI on uvicorn (uvloop, httptools, no access log, no Server/Date headers: the gateway's
settings), one shared aiohttp session to the upstream, the bearer key looked up in a dict, no
limits, no ACLs, no metering. It reads the body, forwards it, and relays the answer chunk by
chunk, so streaming works too.

    python bench/_passthrough.py --port P --upstream http://127.0.0.1:M --key SECRET

Only for bench/bench_gateway.py; listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn

_UNAUTHORIZED = b'{"error":"unauthorized"}'


class PassThrough:
    def __init__(self, upstream: str, keys: dict[bytes, str]) -> None:
        self.upstream = upstream
        self.keys = keys
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
                    )
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.session is not None:
                        await self.session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        auth = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value
        if self.keys.get(auth) is None:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": _UNAUTHORIZED})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        assert self.session is not None
        async with self.session.post(
            self.upstream + scope["path"],
            data=body,
            headers={"content-type": "application/json"},
        ) as response:
            await send({
                "type": "http.response.start",
                "status": response.status,
                "headers": [(b"content-type", response.headers["content-type"].encode())],
            })  # fmt: skip
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    app = PassThrough(args.upstream, {f"Bearer {args.key}".encode(): "k1"})
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        log_level="warning",
        lifespan="on",
        loop="uvloop",
        http="httptools",
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )


if __name__ == "__main__":
    main()
