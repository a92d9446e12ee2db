"""The built-in model server as a plain ASGI application (no framework, msgspec for JSON): this
module assembles it (routing, auth, counting); each endpoint family is a module of
:mod:`keyplane.modelserver.routes`, and reading and pacing is :mod:`keyplane.modelserver.delivery`.

Routes (OpenAI-compatible bodies):

- ``POST /v1/chat/completions`` (``"stream": true`` too, with ``stream_options.include_usage``)
- ``POST /v1/completions`` (legacy; prompt string, list of strings or token arrays; streaming)
- ``POST /v1/responses`` (minimal Responses API; streaming as Responses events)
- ``POST /v1/embeddings`` (``encoding_format`` ``"float"`` or ``"base64"``; ``dimensions``)
- ``POST /v1/images/generations`` (real 64×64 PNGs, ``b64_json`` or ``data:`` URL)
- ``POST /v1/tokenize-text`` (xAI's shape)
- ``GET /v1/models``, ``GET /v1/models/{id}``
- ``GET /health``; ``GET /_stats`` (``DELETE /_stats`` zeroes the totals)

Test knobs, as request headers (a gateway in front must pass them through untouched):

- ``x-keyplane-latency-ms``: delay before the first byte, overriding ``latency_s``;
- ``x-keyplane-token-latency-ms``: delay before each streamed token, overriding ``token_latency_s``
  (with a large ``max_tokens`` this makes a stream as long as a test needs);
- ``x-keyplane-fail-status``: answer with this HTTP status (400–599) and an OpenAI error body,
  after the latency, to exercise a gateway's handling of upstream errors.

``max_tokens`` (``max_completion_tokens``, ``max_output_tokens``) makes the output exactly that many
tokens with finish reason ``"length"``; without it the output is ``default_max_tokens`` tokens
ending in a full stop, finish reason ``"stop"``. All token counts come from
:mod:`keyplane.modelserver.tokenizer`: prompt tokens are the sum over the text of each message (or
prompt, or input item), with no per-message overhead.

``/_stats`` counts inference requests (the POST routes): ``in_flight`` now being answered,
``completed`` answered in full, ``disconnected`` abandoned because the client went away first
(generation stops within a token of noticing); ``requests`` counts every request but ``/_stats``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import partial

from keyplane.asgi import Receive, Scope, Send, send_json_bytes
from keyplane.modelserver.config import ModelServerConfig
from keyplane.modelserver.delivery import (
    ClientGone,
    deliver,
    race_disconnect,
    read_body,
    read_knobs,
)
from keyplane.modelserver.http import HTTPError, Reply, failure, not_allowed, unknown_url
from keyplane.modelserver.routes import chat, embeddings, images, models, responses, stats, tokenize
from keyplane.modelserver.state import ModelServerStats, ServerState

__all__ = ["ModelServerApp", "create_app"]

_HEALTH = b'{"status":"ok"}'


class ModelServerApp:
    """The ASGI application. ``stats`` is live, for in-process tests that skip ``/_stats``."""

    def __init__(self, config: ModelServerConfig) -> None:
        self.config = config
        self.state = ServerState(config)
        self.stats: ModelServerStats = self.state.stats
        self._auth = f"Bearer {config.api_key}".encode() if config.api_key is not None else None
        self._stats_auth = (
            None if config.stats_token is None else f"Bearer {config.stats_token}".encode()
        )
        state = self.state
        self._post: dict[str, Callable[[bytes], Reply]] = {
            "/v1/chat/completions": partial(chat.chat_completions, state),
            "/v1/completions": partial(chat.completions, state),
            "/v1/responses": partial(responses.responses, state),
            "/v1/embeddings": partial(embeddings.embeddings, state),
            "/v1/images/generations": partial(images.images, state),
            "/v1/tokenize-text": partial(tokenize.tokenize_text, state),
        }
        self._get: dict[str, Callable[[], bytes]] = {
            "/v1/models": partial(models.list_models, state),
            "/health": lambda: _HEALTH,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1000})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/_stats":
            if self._stats_auth is not None and not hmac.compare_digest(
                _authorization(scope) or b"", self._stats_auth
            ):
                # As if there were no such route: who may not read it need not learn it exists.
                error = unknown_url(method, path)
                await send_json_bytes(send, error.status, error.body(), error.headers)
                return
            await stats.stats(self.state, method, send)
            return
        self.stats.requests += 1
        try:
            post = self._post.get(path)
            if post is not None:
                if method != "POST":
                    raise not_allowed(method, path, b"POST")
                await self._inference(scope, receive, send, post)
                return
            if path in self._get or path.startswith("/v1/models/"):
                if method != "GET":
                    raise not_allowed(method, path, b"GET")
                if path.startswith("/v1/"):
                    self._check_auth(scope)
                get = self._get.get(path)
                body = (
                    get()
                    if get is not None
                    else models.retrieve_model(self.state, path[len("/v1/models/") :])
                )
                await send_json_bytes(send, 200, body)
                return
            raise unknown_url(method, path)
        except HTTPError as exc:
            await send_json_bytes(send, exc.status, exc.body(), exc.headers)
        except ClientGone:
            pass

    def _check_auth(self, scope: Scope) -> None:
        if self._auth is None:
            return
        for name, value in scope["headers"]:
            if name == b"authorization" and value == self._auth:
                return
        raise HTTPError(401, "Incorrect API key provided.", code="invalid_api_key")

    async def _inference(
        self, scope: Scope, receive: Receive, send: Send, handler: Callable[[bytes], Reply]
    ) -> None:
        self._check_auth(scope)
        knobs, declared = read_knobs(self.config, scope)
        body = await read_body(receive, declared, self.config.max_body_bytes)
        if knobs.fail_status is None:
            reply = handler(body)
        else:
            error = failure(knobs.fail_status)
            reply = Reply(body=error.body(), status=error.status)
        self.stats.in_flight += 1
        try:
            if reply.chunks is None and knobs.latency_s == 0:
                # Nothing to wait for and one send to make: skip the watcher, it costs two tasks.
                finished = await deliver(send, reply, knobs)
            else:
                finished = await race_disconnect(receive, deliver(send, reply, knobs))
        finally:
            self.stats.in_flight -= 1
        if finished:
            self.stats.completed += 1
        else:
            self.stats.disconnected += 1


def _authorization(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    return None


def create_app(config: ModelServerConfig | None = None) -> ModelServerApp:
    """The model server's ASGI application for ``config`` (defaults if omitted)."""
    return ModelServerApp(config or ModelServerConfig())
