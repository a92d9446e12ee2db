"""A raw ASGI app served by a real uvicorn server on loopback, in a thread of the test's process,
with keyplane's bounded HTTP protocol: for tests of the protocol's own behaviour (head caps,
draining a refused body, telling the app its client left) where a subprocess adds nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from keyplane.httpbounds import bounded_protocol
from tests.support.procs import free_port


@contextmanager
def serving(app: Any, *, protocol: Any = None, **config: Any) -> Iterator[int]:
    """Serve ``app`` on a free loopback port until the block ends; yields the port."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            log_level="warning",
            lifespan="off",
            http=protocol if protocol is not None else bounded_protocol(),
            **config,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
