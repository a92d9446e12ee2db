"""Running the built-in model server: ``serve`` (blocking, under uvicorn) and
``BackgroundModelServer`` (on a thread, for in-process tests and benchmarks).

Both bind the listening socket themselves before uvicorn starts, so port 0 yields a real port that
is known, and printed, up front; connections that arrive before uvicorn is up wait in the backlog.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
import threading
from types import TracebackType
from typing import Final, Self

import uvicorn

from keyplane.httpbounds import bounded_protocol
from keyplane.modelserver.app import ModelServerApp, create_app
from keyplane.modelserver.config import ModelServerConfig

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8300


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        if sys.platform != "win32":
            # Lets a restarted server take its port back while old connections sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` for a bound socket, with IPv6 hosts in brackets."""
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _uvicorn_config(
    app: ModelServerApp, *, loop: str, graceful_shutdown_s: int | None
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        loop=loop,
        http=bounded_protocol(app.config.max_head_bytes, app.config.max_headers),
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,  # bytes on every response that nobody reads
        # Streams can be made to last minutes; don't let them hold a shutdown hostage.
        timeout_graceful_shutdown=graceful_shutdown_s,
    )


def _best_loop() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    config: ModelServerConfig | None = None,
    *,
    graceful_shutdown_s: int | None = 2,
) -> None:
    """Run the model server until SIGINT/SIGTERM, printing the URL it listens on once bound."""
    app = create_app(config)
    sock = bind_socket(host, port)
    server = uvicorn.Server(
        _uvicorn_config(app, loop=_best_loop(), graceful_shutdown_s=graceful_shutdown_s)
    )
    print(f"keyplane models listening on {url_of(sock)}", flush=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises Ctrl-C after shutting down gracefully; like uvicorn.run, end quietly.
        pass
    finally:
        sock.close()


class _ThreadServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


class BackgroundModelServer:
    """The model server on a daemon thread with its own event loop.

    Usage::

        with BackgroundModelServer(ModelServerConfig(latency_s=0.01)) as models:
            httpx2.get(models.url + "/v1/models")
            models.app.stats  # the live counters

    Uses the plain asyncio loop: uvloop's policy is process-wide and the caller's tests own it.
    """

    def __init__(
        self, config: ModelServerConfig | None = None, host: str = DEFAULT_HOST, port: int = 0
    ) -> None:
        self.app = create_app(config)
        self._sock = bind_socket(host, port)
        self.url = url_of(self._sock)
        self._server = _ThreadServer(
            _uvicorn_config(self.app, loop="asyncio", graceful_shutdown_s=1)
        )
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            daemon=True,
            name=f"keyplane-models {self.url}",
        )

    def start(self, timeout_s: float = 10.0) -> Self:
        """Start serving; returns once uvicorn accepts requests."""
        self._thread.start()
        if not self._server.ready.wait(timeout_s):
            self.stop()
            raise RuntimeError(f"model server at {self.url} did not start in {timeout_s}s")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving and wait for the thread to finish."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
