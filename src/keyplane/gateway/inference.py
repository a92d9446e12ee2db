"""The inference endpoints: ACLs, limits, and forwarding to the model's upstream.

After ``Gateway`` has authenticated the key and checked its state, a request here goes through
endpoint ACL → model exists (in this cluster) → model ACL → per-key and team × model limits (one
atomic acquire) → forward. Bodies go upstream untouched, but for one change: a stream whose client
did not ask for usage is asked for it, and the extra usage chunk is stripped on the way back, so
``tpm`` is charged the real count while the client sees exactly what it asked for.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import structlog

from keyplane.asgi import Receive, Scope, Send, send_json
from keyplane.catalog import Catalog, CatalogModel
from keyplane.domain.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unavailable,
)
from keyplane.gateway.app import Gateway
from keyplane.gateway.bounds import check_shape
from keyplane.gateway.http import read_body
from keyplane.gateway.replica import KeyRecord
from keyplane.ratelimit import Decision, Limiter, Quota, RequestLimit, TokenLimit
from keyplane.usage.meter import TALLY, Tally

log = structlog.get_logger("keyplane.gateway")

#: (method, path) → the endpoint name an ``api-key:endpoint:<name>`` ACL grants.
ENDPOINTS: dict[tuple[str, str], str] = {
    ("POST", "/v1/chat/completions"): "chat",
    ("POST", "/v1/responses"): "chat",
    ("POST", "/v1/completions"): "sample",
    ("POST", "/v1/images/generations"): "image",
    ("POST", "/v1/embeddings"): "embed",
    ("POST", "/v1/tokenize-text"): "tokenize",
}
#: Streams whose usage comes only when asked for with stream_options.include_usage.
_USAGE_ON_REQUEST = frozenset({"/v1/chat/completions", "/v1/completions"})
_FORWARDED_HEADERS = (b"accept", b"openai-organization", b"openai-project", b"x-request-id")
_TEST_HEADER_PREFIX = b"x-keyplane-"
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "date",
        "server",
    }
)


class _Peek(msgspec.Struct):
    """The only fields of a request body the gateway reads."""

    model: str | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        if self.total_tokens:
            return self.total_tokens
        return self.prompt_tokens + self.completion_tokens + self.input_tokens + self.output_tokens


class _WithUsage(msgspec.Struct):
    usage: _Usage | None = None


class _StreamEvent(msgspec.Struct):
    usage: _Usage | None = None
    choices: list[Any] | None = None
    response: _WithUsage | None = None


_LIMITS_CACHE_SIZE = 100_000
_peek = msgspec.json.Decoder(_Peek)
_top_level = msgspec.json.Decoder(dict[str, msgspec.Raw])
_with_usage = msgspec.json.Decoder(_WithUsage)
_event = msgspec.json.Decoder(_StreamEvent)


@dataclass(frozen=True, slots=True)
class Limits:
    requests: tuple[RequestLimit, ...]
    tokens: tuple[TokenLimit, ...]


def limits_for(key: KeyRecord, model: CatalogModel | None) -> Limits:
    requests: list[RequestLimit] = []
    tokens: list[TokenLimit] = []
    kid = key.api_key_id
    if key.qps:
        requests.append(RequestLimit("qps", f"key:{kid}:qps", key.qps, 1.0))
    if key.qpm:
        requests.append(RequestLimit("qpm", f"key:{kid}:qpm", key.qpm, 60.0))
    if key.tpm:
        tokens.append(TokenLimit("tpm", f"key:{kid}:tpm", key.tpm, 60.0))
    if model is not None:
        spec, team = model.spec, key.team_id
        base = f"team:{team}:model:{spec.name}"
        if spec.rps:
            requests.append(RequestLimit("rps", f"{base}:rps", spec.rps, 1.0))
        if spec.rpm:
            requests.append(RequestLimit("rpm", f"{base}:rpm", spec.rpm, 60.0))
        if spec.tpm:
            tokens.append(TokenLimit("tpm", f"{base}:tpm", spec.tpm, 60.0))
    return Limits(tuple(requests), tuple(tokens))


def _seconds(value: float) -> str:
    return f"{value:.3f}s"


def quota_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    for kind, quota in (("requests", decision.requests), ("tokens", decision.tokens)):
        if quota is None:
            continue
        q: Quota = quota
        headers += [
            (f"x-ratelimit-limit-{kind}".encode(), str(q.limit).encode()),
            (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, q.remaining)).encode()),
            (f"x-ratelimit-reset-{kind}".encode(), _seconds(q.reset_after).encode()),
        ]
    return headers


def _refusal(decision: Decision, key: KeyRecord, model: CatalogModel | None) -> RateLimited:
    headers = {k.decode(): v.decode() for k, v in quota_headers(decision)}
    violated = decision.violated
    detail = violated.message if violated is not None else "rate limiter unavailable"
    if violated is not None and violated.counter.startswith("team:") and model is not None:
        message = f"Too many requests for team {key.team_id} and model {model.name}: {detail}."
    else:
        message = f"Rate limit exceeded for API key {key.redacted}: {detail}."
    return RateLimited(message, retry_after=decision.retry_after, headers=headers)


class Inference:
    """Installs the inference routes on a ``Gateway`` and forwards what they admit."""

    def __init__(
        self,
        gateway: Gateway,
        catalog: Catalog,
        limiter: Limiter,
        *,
        upstream_timeout: float = 300.0,
    ) -> None:
        self.gateway = gateway
        self.catalog = catalog
        self.limiter = limiter
        self.cluster = gateway.config.cluster
        # A bound on silence, not on the whole answer: a long stream may run as long as it flows.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=5.0, sock_read=upstream_timeout
        )
        self._session: aiohttp.ClientSession | None = None
        self._upstream_auth: dict[str, str] = {}
        self._limits: dict[tuple[str, int, str], Limits] = {}
        for model in catalog.models:
            env = model.spec.upstream_api_key_env
            if env and os.environ.get(env):
                self._upstream_auth[model.name] = f"Bearer {os.environ[env]}"
        for (method, path), endpoint in ENDPOINTS.items():
            gateway.route(method, path, self._endpoint_handler(endpoint), endpoint=endpoint)
        gateway.route("GET", "/v1/models", self._list_models, endpoint="models")
        gateway.route("GET", "/v1/models/", self._get_model, endpoint="models")

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=1024, keepalive_timeout=60, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, auto_decompress=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # -- checks -----------------------------------------------------------------------------

    def _check_endpoint(self, key: KeyRecord, endpoint: str) -> None:
        if not key.acls.allows_endpoint(endpoint):
            raise PermissionDenied(
                f"Access to the {endpoint} endpoint is denied. The API key {key.redacted} lacks "
                f"the ACL api-key:endpoint:{endpoint}."
            )

    def _resolve(self, key: KeyRecord, requested: str, scope: Scope) -> CatalogModel:
        model = self.catalog.resolve(requested, self.cluster)
        tally: Tally | None = scope.get(TALLY)
        if tally is not None:
            tally.model = model.name if model is not None else requested[:128]
        if model is None:
            raise NotFound(
                f"The model {requested} does not exist or your team does not have access to it."
            )
        if not key.acls.allows_model(requested, model.name):
            raise PermissionDenied(
                f"The API key {key.redacted} cannot be used to make requests against {requested}. "
                f"Grant it api-key:model:{model.name} to allow this."
            )
        return model

    async def _admit(self, key: KeyRecord, model: CatalogModel | None) -> tuple[Limits, Decision]:
        # A key's limits change only with its revision: build them once per (revision, model).
        cache_key = (key.api_key_id, key.revision, model.name if model else "")
        limits = self._limits.get(cache_key)
        if limits is None:
            if len(self._limits) >= _LIMITS_CACHE_SIZE:
                self._limits.clear()
            limits = self._limits[cache_key] = limits_for(key, model)
        if not limits.requests and not limits.tokens:
            return limits, Decision(True, 0.0, None, None, None)
        decision = await self.limiter.acquire(limits.requests, limits.tokens)
        if not decision.allowed:
            raise _refusal(decision, key, model)
        return limits, decision

    # -- routes -----------------------------------------------------------------------------

    def _endpoint_handler(self, endpoint: str) -> Any:
        async def handle(scope: Scope, receive: Receive, send: Send, key: KeyRecord) -> None:
            self._check_endpoint(key, endpoint)
            body = await read_body(receive, self.gateway.config.max_body_bytes)
            check_shape(body)
            try:
                peek = _peek.decode(body)
            except (msgspec.DecodeError, RecursionError):
                raise InvalidArgument("The request body is not valid JSON.") from None
            except msgspec.ValidationError as error:
                raise InvalidArgument(f"The request body is invalid: {error}.") from None
            if not peek.model:
                raise InvalidArgument("model: is required", field="model")
            model = self._resolve(key, peek.model, scope)
            limits, decision = await self._admit(key, model)
            await self._forward(scope, receive, send, body, peek, model, limits, decision)

        return handle

    def _visible_models(self, key: KeyRecord) -> list[str]:
        return [
            name
            for model in self.catalog.in_cluster(self.cluster)
            for name in (model.name, *model.spec.aliases)
            if key.acls.allows_model(name, model.name)
        ]

    async def _list_models(
        self, scope: Scope, receive: Receive, send: Send, key: KeyRecord
    ) -> None:
        self._check_endpoint(key, "models")
        await self._admit(key, None)
        data = [_model_object(name) for name in self._visible_models(key)]
        await send_json(send, 200, {"object": "list", "data": data})

    async def _get_model(self, scope: Scope, receive: Receive, send: Send, key: KeyRecord) -> None:
        self._check_endpoint(key, "models")
        requested = scope["path"][len("/v1/models/") :]
        self._resolve(key, requested, scope)
        await self._admit(key, None)
        await send_json(send, 200, _model_object(requested))

    # -- forwarding -------------------------------------------------------------------------

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: bytes,
        peek: _Peek,
        model: CatalogModel,
        limits: Limits,
        decision: Decision,
    ) -> None:
        path: str = scope["path"]
        strip_usage = False
        if peek.stream and path in _USAGE_ON_REQUEST:
            options = peek.stream_options or {}
            if not options.get("include_usage"):
                # Top-level fields only, the rest passed through as it came: no number the
                # client sent is re-read (msgspec refuses integers past 64 bits).
                document = _top_level.decode(body)
                document["stream_options"] = msgspec.Raw(
                    msgspec.json.encode({**options, "include_usage": True})
                )
                body = msgspec.json.encode(document)
                strip_usage = True
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        # keyplane's own headers (the model server's test knobs among them) are the project's,
        # not a client's to send upstream, unless a test deployment asks for them.
        test_headers = self.gateway.config.forward_test_headers
        for name, value in scope["headers"]:
            if name in _FORWARDED_HEADERS or (
                test_headers and name.startswith(_TEST_HEADER_PREFIX)
            ):
                headers[name.decode()] = bytes(value).decode("latin-1")
        auth = self._upstream_auth.get(model.name)
        if auth:
            headers["authorization"] = auth
        call = _Call(
            send=send,
            strip_usage=strip_usage,
            extra_headers=quota_headers(decision),
            prompt_estimate=len(body) // 4,
            charge=functools.partial(self.limiter.charge, limits.tokens) if limits.tokens else None,
            tally=scope.get(TALLY),
        )
        # The relay runs in this task; one watcher task cancels it if the client goes away (no
        # second task and no asyncio.wait per request: this is the hot path).
        this = asyncio.current_task()
        assert this is not None
        watcher = asyncio.ensure_future(_cancel_on_disconnect(receive, this, call))
        try:
            await self._relay(model.upstream_url + path[3:], body, headers, call)
        except asyncio.CancelledError:
            if not call.client_gone:
                raise
            this.uncancel()  # ours, not the server's: the request ends normally
        finally:
            watcher.cancel()
            await call.settle()  # a no-op if the answer's end already charged it

    async def _relay(self, url: str, body: bytes, headers: Mapping[str, str], call: _Call) -> None:
        assert self._session is not None, "Inference.start() was not awaited"
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                await call.start(response)
                if response.content_type == "text/event-stream":
                    async for chunk in response.content.iter_any():
                        await call.stream_chunk(chunk)
                    await call.stream_end()
                else:
                    data = await response.read()
                    await call.whole(data, ok=response.status < 400)
        except TimeoutError:
            if call.started:
                return
            raise Unavailable("The model server did not answer in time.", status=504) from None
        except aiohttp.ClientError as error:
            if call.started:
                return  # mid-response failure: the client sees a truncated stream
            log.warning("upstream_error", url=url, error=type(error).__name__)
            raise Unavailable("The model server is unavailable.", status=502) from None


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "keyplane"}


async def _cancel_on_disconnect(receive: Receive, relay: asyncio.Task[Any], call: _Call) -> None:
    """Stop the upstream request (cancel ``relay``) when the client goes away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            call.client_gone = True
            relay.cancel()
            return


class _Call:
    """One forwarded response: relays it to the client and counts its tokens."""

    def __init__(
        self,
        *,
        send: Send,
        strip_usage: bool,
        extra_headers: Sequence[tuple[bytes, bytes]],
        prompt_estimate: int,
        charge: Callable[[int], Awaitable[None]] | None = None,
        tally: Tally | None = None,
    ) -> None:
        self.send = send
        self.tally = tally
        self.strip_usage = strip_usage
        self.extra_headers = extra_headers
        self.prompt_estimate = prompt_estimate
        self.started = False
        self.client_gone = False
        self.usage: _Usage | None = None
        self.events_sent = 0
        self._buffer = b""
        self._charge = charge
        self._settled = False
        self._final_usage = False

    def tokens(self) -> int:
        if self.usage is not None:
            return self.usage.total
        if self.events_sent:
            # Cut short before the usage chunk: charge what the client received, the prompt
            # estimated from the body's size.
            return self.prompt_estimate + self.events_sent
        return 0

    def token_counts(self) -> tuple[int, int]:
        """``tokens()`` split into (prompt, completion): what usage records are charged."""
        usage = self.usage
        if usage is None:
            if self.events_sent:
                return self.prompt_estimate, self.events_sent
            return 0, 0
        prompt = usage.prompt_tokens + usage.input_tokens
        completion = usage.completion_tokens + usage.output_tokens
        total = usage.total
        if prompt + completion != total:  # only a total, or parts that disagree with it
            completion = min(completion, total)
            prompt = total - completion
        return prompt, completion

    async def settle(self) -> None:
        """Charge the call's tokens, once.

        Called as soon as the final usage is known, before the client can see the end of the
        answer (a client that got its answer and sends the next request must find it charged),
        and again when the call ends, for calls cut short before that.
        """
        if self._settled:
            return
        self._settled = True
        if self.tally is not None:
            self.tally.prompt_tokens, self.tally.completion_tokens = self.token_counts()
        if self._charge is not None:
            await self._charge(self.tokens())

    async def start(self, response: aiohttp.ClientResponse) -> None:
        headers = [
            (k.lower().encode(), v.encode("latin-1"))
            for k, v in response.headers.items()
            if k.lower() not in _HOP_BY_HOP
        ]
        self._status = response.status
        self._headers = headers + list(self.extra_headers)

    async def whole(self, data: bytes, *, ok: bool) -> None:
        if ok and b'"usage"' in data:
            try:
                self.usage = _with_usage.decode(data).usage
            except msgspec.MsgspecError:
                self.usage = None
        if ok and self.tally is not None and self.tally.endpoint == "image":
            # Priced per image (usage.record.Prices): one "b64_json" or "url" field each.
            self.tally.images = data.count(b'"b64_json"') + data.count(b'"url"')
        await self.settle()
        await self.send(
            {
                "type": "http.response.start",
                "status": self._status,
                "headers": [*self._headers, (b"content-length", str(len(data)).encode())],
            }
        )
        self.started = True
        await self.send({"type": "http.response.body", "body": data})

    async def stream_chunk(self, chunk: bytes) -> None:
        if not self.started:
            await self.send(
                {"type": "http.response.start", "status": self._status, "headers": self._headers}
            )
            self.started = True
        self._buffer += chunk
        out: list[bytes] = []
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                break
            event, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
            if self._keep(event):
                out.append(event)
        if self._final_usage:
            await self.settle()
        if out:
            self.events_sent += len(out)
            await self.send(
                {"type": "http.response.body", "body": b"".join(out), "more_body": True}
            )

    def _keep(self, event: bytes) -> bool:
        if b'"usage"' not in event:
            return True
        data = event.strip()
        if data.startswith(b"event:"):  # Responses API: "event: name\ndata: {...}"
            data = data.split(b"\n", 1)[-1].strip()
        if not data.startswith(b"data:"):
            return True
        try:
            parsed = _event.decode(data[5:].strip())
        except msgspec.MsgspecError:
            return True
        usage = parsed.usage or (parsed.response.usage if parsed.response else None)
        if usage is not None:
            self.usage = usage
            # Usage in an event without choices is the stream's total (a chat or completions
            # usage chunk, or a Responses API terminal event), not a running count.
            self._final_usage = self._final_usage or not parsed.choices
            if self.strip_usage and not parsed.choices:
                return False  # the chunk only we asked for
        return True

    async def stream_end(self) -> None:
        await self.settle()  # before the last bytes: the answer's end is charged and metered
        if not self.started:
            await self.send(
                {"type": "http.response.start", "status": self._status, "headers": self._headers}
            )
            self.started = True
        await self.send({"type": "http.response.body", "body": self._buffer, "more_body": False})
        self._buffer = b""


__all__ = ["ENDPOINTS", "Inference", "Limits", "limits_for", "quota_headers"]
