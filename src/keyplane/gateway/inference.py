"""The inference endpoints: what each route reads of a request, and in what order it is checked.

After ``Gateway`` has authenticated the key and checked its state, a request here goes through
its ``Admission`` (endpoint ACL → model exists in this cluster → model ACL → limits, one atomic
acquire), then a ``Relay`` forwards it through the ``Upstream`` and its ``Account`` charges what
it cost. The gateway reads only ``model``, ``stream`` and ``stream_options`` of a body.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import msgspec

from keyplane.asgi import DISCONNECT_WATCH, Receive, Scope, Send, send_json
from keyplane.catalog import Catalog
from keyplane.domain.errors import InvalidArgument
from keyplane.gateway import accounting
from keyplane.gateway.accounting import Account
from keyplane.gateway.admission import Admission, quota_headers
from keyplane.gateway.app import Gateway, Handler
from keyplane.gateway.bounds import check_shape
from keyplane.gateway.h1upstream import H1Upstream
from keyplane.gateway.http import read_body
from keyplane.gateway.relay import Relay, upstream_body, upstream_headers
from keyplane.gateway.replica import KeyRecord
from keyplane.gateway.upstream import Upstream
from keyplane.ratelimit import Limiter
from keyplane.usage.meter import Tally

__all__ = ["ENDPOINTS", "Inference"]

#: (method, path) → the endpoint name an ``api-key:endpoint:<name>`` ACL grants.
ENDPOINTS: dict[tuple[str, str], str] = {
    ("POST", "/v1/chat/completions"): "chat",
    ("POST", "/v1/responses"): "chat",
    ("POST", "/v1/completions"): "sample",
    ("POST", "/v1/images/generations"): "image",
    ("POST", "/v1/embeddings"): "embed",
    ("POST", "/v1/tokenize-text"): "tokenize",
}


class _Peek(msgspec.Struct):
    """The only fields of a request body the gateway reads."""

    model: str | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None


_peek = msgspec.json.Decoder(_Peek)


class Inference:
    """Installs the inference routes on a ``Gateway`` and forwards what they admit.

    ``upstream``: how the model servers are reached; ``H1Upstream`` (its read timeout
    ``upstream_timeout``) unless given.
    """

    def __init__(
        self,
        gateway: Gateway,
        catalog: Catalog,
        limiter: Limiter,
        *,
        upstream: Upstream | None = None,
        upstream_timeout: float = 300.0,
    ) -> None:
        self.gateway = gateway
        self.limiter = limiter
        self.admission = Admission(catalog, limiter, gateway.config.cluster)
        self.upstream = upstream or H1Upstream(read_timeout=upstream_timeout)
        self._upstream_auth: dict[str, str] = {}
        for model in catalog.models:
            env = model.spec.upstream_api_key_env
            if env and os.environ.get(env):
                self._upstream_auth[model.name] = f"Bearer {os.environ[env]}"
        for (method, path), endpoint in ENDPOINTS.items():
            gateway.route(method, path, self._endpoint_handler(endpoint), endpoint=endpoint)
        gateway.route("GET", "/v1/models", self._list_models, endpoint="models")
        gateway.route("GET", "/v1/models/", self._get_model, endpoint="models")

    async def start(self) -> None:
        await self.upstream.start()

    async def close(self) -> None:
        await self.upstream.close()

    def _endpoint_handler(self, endpoint: str) -> Handler:
        admission, limiter, upstream = self.admission, self.limiter, self.upstream
        max_body_bytes = self.gateway.config.max_body_bytes
        test_headers = self.gateway.config.forward_test_headers

        async def handle(
            scope: Scope, receive: Receive, send: Send, key: KeyRecord, tally: Tally | None
        ) -> None:
            admission.check_endpoint(key, endpoint)
            body = await read_body(receive, max_body_bytes)
            check_shape(body)
            try:
                peek = _peek.decode(body)
            except (msgspec.DecodeError, RecursionError):
                raise InvalidArgument("The request body is not valid JSON.") from None
            except msgspec.ValidationError as error:
                raise InvalidArgument(f"The request body is invalid: {error}.") from None
            if not peek.model:
                raise InvalidArgument("model: is required", field="model")
            model = admission.resolve(key, peek.model, tally)
            limits, decision = await admission.admit(key, model)
            path: str = scope["path"]
            body, strip_usage = upstream_body(path, body, peek.stream, peek.stream_options)
            headers = upstream_headers(
                scope,
                test_headers=test_headers,
                authorization=self._upstream_auth.get(model.name),
            )
            charge = functools.partial(limiter.charge, limits.tokens) if limits.tokens else None
            account = Account(
                prompt_estimate=len(body) // 4, charge=charge, tally=tally, meter=self.gateway.meter
            )
            relay = Relay(
                send, account, strip_usage=strip_usage, extra_headers=quota_headers(decision)
            )
            await relay.run(
                upstream,
                model.upstream_url + path[3:],
                body,
                headers,
                receive,
                scope.get(DISCONNECT_WATCH),
            )

        return handle

    async def _list_models(
        self, scope: Scope, receive: Receive, send: Send, key: KeyRecord, tally: Tally | None
    ) -> None:
        self.admission.check_endpoint(key, "models")
        await self.admission.admit(key, None)
        data = [_model_object(name) for name in self.admission.visible_models(key)]
        accounting.close(tally, self.gateway.meter)  # metered before the answer
        await send_json(send, 200, {"object": "list", "data": data})

    async def _get_model(
        self, scope: Scope, receive: Receive, send: Send, key: KeyRecord, tally: Tally | None
    ) -> None:
        self.admission.check_endpoint(key, "models")
        requested = scope["path"][len("/v1/models/") :]
        self.admission.resolve(key, requested, tally)
        await self.admission.admit(key, None)
        accounting.close(tally, self.gateway.meter)  # metered before the answer
        await send_json(send, 200, _model_object(requested))


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "keyplane"}
