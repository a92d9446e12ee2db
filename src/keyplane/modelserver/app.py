"""The built-in model server as a plain ASGI application (no framework, msgspec for JSON).

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

import asyncio
import base64
import hmac
import itertools
import re
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgspec

from keyplane.asgi import Receive, Scope, Send, send_json_bytes
from keyplane.modelserver import protocol
from keyplane.modelserver.config import ModelServerConfig
from keyplane.modelserver.embeddings import MAX_DIMENSIONS, embed, embed_token_ids, to_base64
from keyplane.modelserver.png import IMAGE_SIZE, image_for_prompt
from keyplane.modelserver.textgen import generate_tokens, seed_for
from keyplane.modelserver.tokenizer import count_tokens, token_id, tokenize

_T = TypeVar("_T")

MAX_IMAGES: Final = 10
MAX_EMBEDDING_INPUTS: Final = 2048
IMAGE_OUTPUT_TOKENS: Final = (IMAGE_SIZE // 16) ** 2
"""Images report one output token per 16×16 tile, a fixed and predictable count per image."""
MODEL_CREATED: Final = 1_735_689_600  # 2025-01-01T00:00:00Z; a fixed "created" keeps lists stable
_DISCARD_LIMIT: Final = 64 * 1024 * 1024
_YIELD_EVERY: Final = 32

_SSE_HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_DONE: Final = b"data: [DONE]\n\n"
_AT_PATH: Final = re.compile(r"at `\$\.([^`\[]+)")

_encode = msgspec.json.Encoder().encode


class HTTPError(Exception):
    """An error answer in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = headers or []

    def body(self) -> bytes:
        return _encode(
            {
                "error": {
                    "message": self.message,
                    "type": self.error_type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )


def _failure(status: int) -> HTTPError:
    """The error an ``x-keyplane-fail-status`` header asks for, typed the way OpenAI types it."""
    if status == 429:
        return HTTPError(
            429,
            "Rate limit reached (injected by x-keyplane-fail-status).",
            error_type="requests",
            code="rate_limit_exceeded",
        )
    if status >= 500:
        return HTTPError(
            status,
            "The server had an error (injected by x-keyplane-fail-status).",
            error_type="server_error",
        )
    return HTTPError(status, "Request failed (injected by x-keyplane-fail-status).")


class ModelServerStats(msgspec.Struct):
    """Counters behind ``GET /_stats``; see the module docstring for what each one counts."""

    in_flight: int = 0
    completed: int = 0
    disconnected: int = 0
    requests: int = 0
    #: Tokens in the usage of every answer made (what a gateway meters, for a full answer).
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class _Reply:
    """What a handler decided to answer; the app delivers it, paced and watched.

    Exactly one of ``body`` (a whole JSON document) and ``chunks`` (a stream) is set. Each chunk
    comes with a flag saying whether it carries a generated token, i.e. is paced by token latency.
    """

    body: bytes | None = None
    chunks: Iterable[tuple[bytes, bool]] | None = None
    status: int = 200


@dataclass(slots=True)
class _Knobs:
    latency_s: float
    token_latency_s: float
    fail_status: int | None


class _ClientGone(Exception):
    """The client disconnected before we had its whole request."""


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _race_disconnect(receive: Receive, work: Coroutine[Any, Any, bool]) -> bool:
    """Run ``work`` until it finishes or the client disconnects; True if it finished in full.

    When the client goes first, ``work`` is cancelled at its next await, which is how a stream
    stops generating promptly and frees whatever it held.
    """
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_until_disconnect(receive))
    try:
        done, _ = await asyncio.wait((work_task, watch_task), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        work_task.cancel()
        watch_task.cancel()
        raise
    # Finishing the response also wakes the watcher (uvicorn then reports "disconnect"), so when
    # both are done the work decides.
    if work_task in done:
        watch_task.cancel()
        return work_task.result()
    work_task.cancel()
    # wait() neither raises the task's CancelledError nor swallows our own cancellation.
    await asyncio.wait((work_task,))
    return False


def _decode(body: bytes, decoder: msgspec.json.Decoder[_T]) -> _T:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        found = _AT_PATH.search(str(exc))
        raise HTTPError(
            400, f"Invalid request body: {exc}", param=found.group(1) if found else None
        ) from None
    except msgspec.DecodeError:
        raise HTTPError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        ) from None


def _usage_chat(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _message_texts(content: str | list[protocol.ContentPart] | None) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    return [part.text for part in content if part.text is not None]


def _item_texts(item: Any) -> list[str]:
    """Texts of one Responses API input item: a message with string or part-list content."""
    if isinstance(item, str):
        return [item]
    if not isinstance(item, dict):
        raise HTTPError(400, "Invalid 'input': items must be objects.", param="input")
    texts: list[str] = []
    content = item.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        texts.extend(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    # Tool results carry their text in "output".
    if isinstance(item.get("output"), str):
        texts.append(item["output"])
    return texts


def _is_token_array(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def _split_inputs(value: Any, param: str) -> list[str | list[int]]:
    """OpenAI's polymorphic ``prompt``/``input``: a string, strings, token ids, or lists of ids."""
    invalid = HTTPError(
        400, f"'$.{param}' is invalid. Please check the API reference.", param=param
    )
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise invalid
    if all(isinstance(v, str) for v in value):
        return list(value)
    if _is_token_array(value):
        return [value]
    if all(_is_token_array(v) for v in value):
        return list(value)
    raise invalid


class ModelServerApp:
    """The ASGI application. ``stats`` is live, for in-process tests that skip ``/_stats``."""

    def __init__(self, config: ModelServerConfig) -> None:
        self.config = config
        self.stats = ModelServerStats()
        self._ids = itertools.count(1)
        # A per-process prefix keeps ids unique across restarts without a syscall per request.
        self._id_salt = secrets.token_hex(6)
        self._auth = f"Bearer {config.api_key}".encode() if config.api_key is not None else None
        self._stats_auth = (
            None if config.stats_token is None else f"Bearer {config.stats_token}".encode()
        )
        self._post: dict[str, Callable[[bytes], _Reply]] = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/responses": self._responses,
            "/v1/embeddings": self._embeddings,
            "/v1/images/generations": self._images,
            "/v1/tokenize-text": self._tokenize,
        }
        self._get: dict[str, Callable[[], bytes]] = {
            "/v1/models": self._list_models,
            "/health": lambda: b'{"status":"ok"}',
        }
        self._chat_decoder = msgspec.json.Decoder(protocol.ChatCompletionRequest)
        self._completion_decoder = msgspec.json.Decoder(protocol.CompletionRequest)
        self._responses_decoder = msgspec.json.Decoder(protocol.ResponsesRequest)
        self._embedding_decoder = msgspec.json.Decoder(protocol.EmbeddingRequest)
        self._image_decoder = msgspec.json.Decoder(protocol.ImageGenerationRequest)
        self._tokenize_decoder = msgspec.json.Decoder(protocol.TokenizeTextRequest)

    # -- ASGI plumbing -------------------------------------------------------------------------

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
                error = HTTPError(404, f"Unknown request URL: {method} {path}.", code="unknown_url")
                await send_json_bytes(send, error.status, error.body(), error.headers)
                return
            await self._stats_route(method, send)
            return
        self.stats.requests += 1
        try:
            post = self._post.get(path)
            if post is not None:
                if method != "POST":
                    raise self._not_allowed(method, path, b"POST")
                await self._inference(scope, receive, send, post)
                return
            if path in self._get or path.startswith("/v1/models/"):
                if method != "GET":
                    raise self._not_allowed(method, path, b"GET")
                if path.startswith("/v1/"):
                    self._check_auth(scope)
                get = self._get.get(path)
                body = (
                    get() if get is not None else self._retrieve_model(path[len("/v1/models/") :])
                )
                await send_json_bytes(send, 200, body)
                return
            raise HTTPError(404, f"Unknown request URL: {method} {path}.", code="unknown_url")
        except HTTPError as exc:
            await send_json_bytes(send, exc.status, exc.body(), exc.headers)
        except _ClientGone:
            pass

    @staticmethod
    def _not_allowed(method: str, path: str, allow: bytes) -> HTTPError:
        return HTTPError(
            405,
            f"Method {method} is not allowed for {path}.",
            code="method_not_allowed",
            headers=[(b"allow", allow)],
        )

    def _count_tokens(self, prompt: int, completion: int) -> None:
        self.stats.prompt_tokens += prompt
        self.stats.completion_tokens += completion

    async def _stats_route(self, method: str, send: Send) -> None:
        if method == "DELETE":
            # in_flight is live state, not a total: resetting it would make it go negative.
            self.stats.completed = self.stats.disconnected = self.stats.requests = 0
            self.stats.prompt_tokens = self.stats.completion_tokens = 0
        elif method != "GET":
            error = self._not_allowed(method, "/_stats", b"GET, DELETE")
            await send_json_bytes(send, error.status, error.body(), error.headers)
            return
        await send_json_bytes(send, 200, _encode(self.stats))

    def _check_auth(self, scope: Scope) -> None:
        if self._auth is None:
            return
        for name, value in scope["headers"]:
            if name == b"authorization" and value == self._auth:
                return
        raise HTTPError(401, "Incorrect API key provided.", code="invalid_api_key")

    def _knobs(self, scope: Scope) -> tuple[_Knobs, int | None]:
        """The per-request test headers, and the declared Content-Length, in one header pass."""
        knobs = _Knobs(self.config.latency_s, self.config.token_latency_s, None)
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = int(value) if value.isdigit() else None
            elif name.startswith(b"x-keyplane-"):
                if name == b"x-keyplane-latency-ms":
                    knobs.latency_s = _milliseconds(name, value)
                elif name == b"x-keyplane-token-latency-ms":
                    knobs.token_latency_s = _milliseconds(name, value)
                elif name == b"x-keyplane-fail-status":
                    status = int(value) if value.isdigit() else 0
                    if not 400 <= status <= 599:
                        raise HTTPError(400, "x-keyplane-fail-status must be 400..599.")
                    knobs.fail_status = status
        return knobs, declared

    async def _read_body(self, receive: Receive, declared: int | None) -> bytes:
        limit = self.config.max_body_bytes
        too_large = HTTPError(
            413, f"Request body too large; the limit is {limit} bytes.", code="request_too_large"
        )
        if declared is not None and declared > _DISCARD_LIMIT:
            # Not worth draining: answer and drop the connection.
            too_large.headers = [(b"connection", b"close")]
            raise too_large
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False) and len(body) <= limit:
            return body  # the common case: the whole body in one message
        parts = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= limit:
                parts.append(chunk)
        if size > limit:
            # Answering only after the body has been read keeps the connection usable and stops the
            # client from seeing a reset instead of our 413.
            raise too_large
        return b"".join(parts)

    async def _inference(
        self, scope: Scope, receive: Receive, send: Send, handler: Callable[[bytes], _Reply]
    ) -> None:
        self._check_auth(scope)
        knobs, declared = self._knobs(scope)
        body = await self._read_body(receive, declared)
        if knobs.fail_status is None:
            reply = handler(body)
        else:
            failure = _failure(knobs.fail_status)
            reply = _Reply(body=failure.body(), status=failure.status)
        self.stats.in_flight += 1
        try:
            if reply.chunks is None and knobs.latency_s == 0:
                # Nothing to wait for and one send to make: skip the watcher, it costs two tasks.
                finished = await self._deliver(send, reply, knobs)
            else:
                finished = await _race_disconnect(receive, self._deliver(send, reply, knobs))
        finally:
            self.stats.in_flight -= 1
        if finished:
            self.stats.completed += 1
        else:
            self.stats.disconnected += 1

    async def _deliver(self, send: Send, reply: _Reply, knobs: _Knobs) -> bool:
        """Send ``reply`` at the simulated model's pace; False if the client is gone."""
        if knobs.latency_s > 0:
            await asyncio.sleep(knobs.latency_s)
        try:
            if reply.body is not None:
                await send_json_bytes(send, reply.status, reply.body)
                return True
            assert reply.chunks is not None
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            pause = knobs.token_latency_s
            tokens = 0
            for chunk, paced in reply.chunks:
                if paced:
                    if pause > 0:
                        await asyncio.sleep(pause)
                    else:
                        tokens += 1
                        if tokens % _YIELD_EVERY == 0:
                            # uvicorn's send never blocks on a fast client, so yield now and then
                            # to let the disconnect watcher run.
                            await asyncio.sleep(0)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            # Some servers (uvicorn's h11 protocol) raise on send after a disconnect.
            return False
        return True

    # -- helpers shared by the generating routes -----------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{self._id_salt}{next(self._ids):010x}"

    def _output_length(self, limit: int | None, param: str) -> tuple[int, str]:
        """How many tokens to generate, and the finish reason that goes with it."""
        if limit is None:
            return self.config.default_max_tokens, "stop"
        return _within(limit, self.config.max_output_tokens, param), "length"

    @staticmethod
    def _require_model(model: str) -> None:
        if not model:
            raise HTTPError(400, "you must provide a model parameter", param="model")

    # -- POST /v1/chat/completions ---------------------------------------------------------------

    def _chat(self, body: bytes) -> _Reply:
        req = _decode(body, self._chat_decoder)
        self._require_model(req.model)
        if req.max_completion_tokens is not None:
            count, finish = self._output_length(req.max_completion_tokens, "max_completion_tokens")
        else:
            count, finish = self._output_length(req.max_tokens, "max_tokens")
        prompt_tokens = 0
        seed_parts: list[str] = []
        for message in req.messages:
            texts = _message_texts(message.content)
            prompt_tokens += sum(count_tokens(text) for text in texts)
            seed_parts.append(message.role + "\x1f" + "\x1f".join(texts))
        tokens = generate_tokens(
            seed_for(req.model, "\x1e".join(seed_parts)), count, finish=finish == "stop"
        )
        usage = _usage_chat(prompt_tokens, len(tokens))
        self._count_tokens(prompt_tokens, len(tokens))
        ident = self._new_id("chatcmpl-")
        created = int(time.time())
        if not req.stream:
            return _Reply(body=_encode({
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": req.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(tokens), "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }],
                "usage": usage,
                "system_fingerprint": None,
            }))  # fmt: skip
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _Reply(
            chunks=self._chat_chunks(
                ident, created, req.model, tokens, finish, usage, include_usage
            )
        )

    @staticmethod
    def _chat_chunks(
        ident: str,
        created: int,
        model: str,
        tokens: list[str],
        finish: str,
        usage: dict[str, int],
        include_usage: bool,
    ) -> Iterator[tuple[bytes, bool]]:
        head, tail = _chunk_frame(ident, "chat.completion.chunk", created, model, include_usage)
        yield (
            (
                head + b'{"index":0,"delta":{"role":"assistant","content":""},'
                b'"logprobs":null,"finish_reason":null}' + tail
            ),
            False,
        )
        for token in tokens:
            yield (
                (
                    head
                    + b'{"index":0,"delta":{"content":'
                    + _encode(token)
                    + b'},"logprobs":null,"finish_reason":null}'
                    + tail
                ),
                True,
            )
        yield (
            (
                head
                + b'{"index":0,"delta":{},"logprobs":null,"finish_reason":"'
                + finish.encode()
                + b'"}'
                + tail
            ),
            False,
        )
        if include_usage:
            yield head + b'],"usage":' + _encode(usage) + b"}\n\n", False
        yield _DONE, False

    # -- POST /v1/completions --------------------------------------------------------------------

    def _completions(self, body: bytes) -> _Reply:
        req = _decode(body, self._completion_decoder)
        self._require_model(req.model)
        count, finish = self._output_length(req.max_tokens, "max_tokens")
        prompts = _split_inputs(req.prompt, "prompt")
        outputs: list[list[str]] = []
        prompt_tokens = 0
        for prompt in prompts:
            if isinstance(prompt, str):
                prompt_tokens += count_tokens(prompt)
                seed = seed_for(req.model, prompt)
            else:
                prompt_tokens += len(prompt)
                seed = seed_for(req.model, "\x00ids:" + ",".join(map(str, prompt)))
            outputs.append(generate_tokens(seed, count, finish=finish == "stop"))
        usage = _usage_chat(prompt_tokens, sum(map(len, outputs)))
        self._count_tokens(prompt_tokens, sum(map(len, outputs)))
        ident = self._new_id("cmpl-")
        created = int(time.time())
        if not req.stream:
            return _Reply(body=_encode({
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": req.model,
                "choices": [
                    {"text": "".join(out), "index": i, "logprobs": None, "finish_reason": finish}
                    for i, out in enumerate(outputs)
                ],
                "usage": usage,
            }))  # fmt: skip
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _Reply(
            chunks=self._completion_chunks(
                ident, created, req.model, outputs, finish, usage, include_usage
            )
        )

    @staticmethod
    def _completion_chunks(
        ident: str,
        created: int,
        model: str,
        outputs: list[list[str]],
        finish: str,
        usage: dict[str, int],
        include_usage: bool,
    ) -> Iterator[tuple[bytes, bool]]:
        head, tail = _chunk_frame(ident, "text_completion", created, model, include_usage)
        for index, tokens in enumerate(outputs):
            at = b',"index":' + str(index).encode() + b',"logprobs":null,"finish_reason":'
            for token in tokens:
                yield head + b'{"text":' + _encode(token) + at + b"null}" + tail, True
            yield head + b'{"text":""' + at + b'"' + finish.encode() + b'"}' + tail, False
        if include_usage:
            yield head + b'],"usage":' + _encode(usage) + b"}\n\n", False
        yield _DONE, False

    # -- POST /v1/responses ----------------------------------------------------------------------

    def _responses(self, body: bytes) -> _Reply:
        req = _decode(body, self._responses_decoder)
        self._require_model(req.model)
        count, finish = self._output_length(req.max_output_tokens, "max_output_tokens")
        if isinstance(req.input, str):
            texts = [req.input]
        elif isinstance(req.input, list):
            texts = [text for item in req.input for text in _item_texts(item)]
        else:
            raise HTTPError(
                400, "Invalid 'input': expected a string or a list of items.", param="input"
            )
        if req.instructions:
            texts.insert(0, req.instructions)
        input_tokens = sum(count_tokens(text) for text in texts)
        tokens = generate_tokens(
            seed_for(req.model, "\x1e".join(texts)), count, finish=finish == "stop"
        )
        text = "".join(tokens)
        self._count_tokens(input_tokens, len(tokens))
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": len(tokens),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + len(tokens),
        }
        ident = self._new_id("resp_")
        message_id = self._new_id("msg_")
        complete = finish == "stop"
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {
            "id": message_id, "type": "message", "status": "completed" if complete else
            "incomplete", "role": "assistant", "content": [part],
        }  # fmt: skip
        # A response cut short by max_output_tokens is "incomplete", as OpenAI reports it.
        response: dict[str, Any] = {
            "id": ident,
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed" if complete else "incomplete",
            "incomplete_details": None if complete else {"reason": "max_output_tokens"},
            "error": None,
            "model": req.model,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "output": [item],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": usage,
        }
        if not req.stream:
            return _Reply(body=_encode(response))
        return _Reply(chunks=_response_events(response, item, tokens))

    # -- POST /v1/embeddings ---------------------------------------------------------------------

    def _embeddings(self, body: bytes) -> _Reply:
        req = _decode(body, self._embedding_decoder)
        self._require_model(req.model)
        inputs = _split_inputs(req.input, "input")
        if len(inputs) > MAX_EMBEDDING_INPUTS:
            raise HTTPError(
                400, f"'$.input' must have at most {MAX_EMBEDDING_INPUTS} items.", param="input"
            )
        dims = self.config.embedding_dims if req.dimensions is None else req.dimensions
        _within(dims, MAX_DIMENSIONS, "dimensions")
        fmt = _one_of(req.encoding_format or "float", ("float", "base64"), "encoding_format")
        data: list[dict[str, Any]] = []
        prompt_tokens = 0
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                if not item:
                    raise HTTPError(
                        400, "'$.input' is invalid: inputs must not be empty.", param="input"
                    )
                prompt_tokens += count_tokens(item)
                vector = embed(req.model, item, dims)
            else:
                prompt_tokens += len(item)
                vector = embed_token_ids(req.model, item, dims)
            data.append({
                "object": "embedding",
                "index": index,
                "embedding": to_base64(vector) if fmt == "base64" else vector,
            })  # fmt: skip
        self._count_tokens(prompt_tokens, 0)
        return _Reply(body=_encode({
            "object": "list",
            "data": data,
            "model": req.model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }))  # fmt: skip

    # -- POST /v1/images/generations -------------------------------------------------------------

    def _images(self, body: bytes) -> _Reply:
        req = _decode(body, self._image_decoder)
        if not req.prompt:
            raise HTTPError(400, "Invalid 'prompt': must not be empty.", param="prompt")
        n = _within(1 if req.n is None else req.n, MAX_IMAGES, "n")
        fmt = _one_of(req.response_format or "b64_json", ("b64_json", "url"), "response_format")
        data: list[dict[str, str]] = []
        for index in range(n):
            encoded = base64.b64encode(image_for_prompt(req.prompt, index)).decode("ascii")
            if fmt == "url":
                data.append({"url": "data:image/png;base64," + encoded})
            else:
                data.append({"b64_json": encoded})
        input_tokens = count_tokens(req.prompt)
        output_tokens = n * IMAGE_OUTPUT_TOKENS
        self._count_tokens(input_tokens, output_tokens)
        return _Reply(body=_encode({
            "created": int(time.time()),
            "data": data,
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"text_tokens": input_tokens, "image_tokens": 0},
                "output_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
            },
        }))  # fmt: skip

    # -- POST /v1/tokenize-text ------------------------------------------------------------------

    def _tokenize(self, body: bytes) -> _Reply:
        req = _decode(body, self._tokenize_decoder)
        return _Reply(body=_encode({
            "token_ids": [
                {
                    "token_id": token_id(piece),
                    "string_token": piece,
                    "token_bytes": list(piece.encode("utf-8", "surrogatepass")),
                }
                for piece in tokenize(req.text)
            ]
        }))  # fmt: skip

    # -- GET /v1/models --------------------------------------------------------------------------

    @staticmethod
    def _model_object(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": "keyplane"}

    def _list_models(self) -> bytes:
        return _encode({
            "object": "list",
            "data": [self._model_object(model) for model in self.config.models],
        })  # fmt: skip

    def _retrieve_model(self, model: str) -> bytes:
        if not model or (self.config.models and model not in self.config.models):
            raise HTTPError(
                404, f"The model '{model}' does not exist.", param="model", code="model_not_found"
            )
        return _encode(self._model_object(model))


def _response_events(
    response: dict[str, Any], item: dict[str, Any], tokens: list[str]
) -> Iterator[tuple[bytes, bool]]:
    """The Responses API's streaming events for ``response``, one text delta per token."""
    sequence = itertools.count()

    def event(kind: str, payload: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": next(sequence), **payload}
        return b"event: " + kind.encode() + b"\ndata: " + _encode(data) + b"\n\n"

    pending = {
        **response,
        "status": "in_progress",
        "incomplete_details": None,
        "output": [],
        "usage": None,
    }
    part = item["content"][0]
    where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
    yield event("response.created", {"response": pending}), False
    yield event("response.in_progress", {"response": pending}), False
    yield event("response.output_item.added", {
        "output_index": 0, "item": {**item, "status": "in_progress", "content": []},
    }), False  # fmt: skip
    yield event("response.content_part.added", {**where, "part": {**part, "text": ""}}), False
    for token in tokens:
        yield event("response.output_text.delta", {**where, "delta": token, "logprobs": []}), True
    yield event("response.output_text.done", {**where, "text": part["text"], "logprobs": []}), False
    yield event("response.content_part.done", {**where, "part": part}), False
    yield event("response.output_item.done", {"output_index": 0, "item": item}), False
    final = "response.completed" if response["status"] == "completed" else "response.incomplete"
    yield event(final, {"response": response}), False


def _milliseconds(name: bytes, value: bytes) -> float:
    try:
        ms = float(value)
    except ValueError:
        ms = -1.0
    if not 0 <= ms <= 3_600_000:
        raise HTTPError(400, f"{name.decode()} must be a number of milliseconds in 0..3600000.")
    return ms / 1000


def _authorization(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    return None


def create_app(config: ModelServerConfig | None = None) -> ModelServerApp:
    """The model server's ASGI application for ``config`` (defaults if omitted)."""
    return ModelServerApp(config or ModelServerConfig())


def _chunk_frame(
    ident: str, kind: str, created: int, model: str, include_usage: bool
) -> tuple[bytes, bytes]:
    """The bytes around a stream chunk's choices. Chunks are spliced from pre-encoded fragments:
    per token only the token is encoded."""
    head = (
        b'data: {"id":"'
        + ident.encode()
        + b'","object":"'
        + kind.encode()
        + b'","created":'
        + str(created).encode()
        + b',"model":'
        + _encode(model)
        + b',"choices":['
    )
    # With include_usage OpenAI sends "usage": null on every chunk but the last.
    tail = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"
    return head, tail


def _within(value: int, top: int, param: str) -> int:
    """``value`` if it lies in 1..``top``, else OpenAI's 400 for that parameter."""
    if not 1 <= value <= top:
        raise HTTPError(
            400,
            f"Invalid '{param}': must be between 1 and {top}.",
            param=param,
            code="invalid_value",
        )
    return value


def _one_of(value: str, allowed: tuple[str, ...], param: str) -> str:
    if value not in allowed:
        expected = " or ".join(f"'{a}'" for a in allowed)
        raise HTTPError(
            400, f"Invalid '{param}': expected {expected}.", param=param, code="invalid_value"
        )
    return value
