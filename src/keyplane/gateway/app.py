"""The gateway's inference API: a plain ASGI app (no framework) on the hot path.

Check order, from the contract: credentials → key state → endpoint ACL → model → model ACL →
limits → forward. This module authenticates and routes; what an endpoint does lives beside it.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import prometheus_client
import structlog

from keyplane.asgi import Receive, Scope, Send, header, send_json
from keyplane.domain import keysecrets
from keyplane.domain.errors import (
    InvalidArgument,
    KeyplaneError,
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from keyplane.gateway import accounting
from keyplane.gateway.http import send_error, status_of
from keyplane.gateway.replica import KeyRecord, Replica
from keyplane.usage.meter import Meter, Tally

log = structlog.get_logger("keyplane.gateway")

_BEARER_LENGTH = len(b"Bearer ")
_DIGEST = keysecrets.DIGEST

#: A route's handler: the request, its key, and its usage tally if the route is metered.
Handler = Callable[[Scope, Receive, Send, KeyRecord, Tally | None], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    cluster: str
    api_key_prefix: str = "xai-"
    max_body_bytes: int = 4 * 1024 * 1024
    #: Bearer token of /metrics and the detailed /healthz; None: both answer 404.
    metrics_token: str | None = None
    #: Forward clients' x-keyplane-* headers upstream (tests and demos only).
    forward_test_headers: bool = False


def incorrect_key(redacted: str | None) -> InvalidArgument:
    shown = f": {redacted}" if redacted else ""
    return InvalidArgument(
        f"Incorrect API key provided{shown}. You can obtain an API key from your team's "
        "Management API or console."
    )


class Gateway:
    """Routes requests, authenticates the API key against the replica, hands over to a handler."""

    def __init__(
        self,
        config: GatewayConfig,
        replica: Replica,
        *,
        is_synced: Callable[[], bool] = lambda: True,
        limiter_ok: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.replica = replica
        self._is_synced = is_synced
        self._limiter_ok = limiter_ok
        self._clock = clock
        prefix = config.api_key_prefix.encode()
        self._bearer_prefix = b"Bearer " + prefix
        self._bearer_length = len(self._bearer_prefix) + keysecrets.SECRET_LENGTH
        # (method, path) → (handler, whether a disabled or expired key may use it)
        self.routes: dict[tuple[str, str], tuple[Handler, bool]] = {
            ("GET", "/v1/api-key"): (self._api_key_info, True),
            ("GET", "/v1/me"): (self._me, True),
        }
        #: Usage metering (``keyplane.usage``): routes whose requests become usage records.
        self.meter: Meter | None = None
        self.metered: dict[tuple[str, str], str] = {}

    def route(
        self,
        method: str,
        path: str,
        handler: Handler,
        *,
        any_state: bool = False,
        endpoint: str | None = None,
    ) -> None:
        """``endpoint``: the endpoint name its requests are metered under, if they are."""
        self.routes[(method, path)] = (handler, any_state)
        if endpoint is not None:
            self.metered[(method, path)] = endpoint

    def _metered_prefix(self, method: str, path: str) -> str | None:
        # Metered routes registered with a trailing "/" (e.g. /v1/models/{id}).
        for (m, p), name in self.metered.items():
            if m == method and p.endswith("/") and path.startswith(p):
                return name
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        # A metered request is recorded by whatever sends its answer's last bytes, just before
        # (``keyplane.gateway.accounting``); ``send`` itself is not wrapped (a stream sends many).
        # Its tally is handed to the handler (no scope entry, no call to make it).
        meter = self.meter
        tally = None
        if meter is not None:
            method, path = scope["method"], scope["path"]
            endpoint = self.metered.get((method, path)) or self._metered_prefix(method, path)
            if endpoint is not None:
                tally = Tally(endpoint)
        try:
            await self._dispatch(scope, receive, send, tally)
        except KeyplaneError as error:
            if tally is not None:
                tally.status = status_of(error)
                accounting.close(tally, meter)  # before the refusal goes out
            await send_error(send, error)
        except ConnectionResetError:
            if tally is not None:
                tally.status = 499  # the client went away before the answer
        finally:
            if tally is not None and not tally.finished:
                accounting.close(tally, meter)  # cut short: recorded as it ends

    async def _dispatch(
        self, scope: Scope, receive: Receive, send: Send, tally: Tally | None
    ) -> None:
        method, path = scope["method"], scope["path"]
        if path == "/healthz":
            # Readiness for anyone (load balancers); the revision and cluster for operators.
            health: dict[str, Any] = {
                "status": "ok",
                "synced": self._is_synced(),
                "limiter": "ok" if self._limiter_ok() else "degraded",
            }
            if self._is_operator(scope):
                health |= {"cluster": self.config.cluster, "revision": self.replica.revision}
            await send_json(send, 200, health)
            return
        if path == "/metrics" and method == "GET":
            if not self._is_operator(scope):
                raise NotFound(f"No route {path}.")
            payload = prometheus_client.generate_latest()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", prometheus_client.CONTENT_TYPE_LATEST.encode())],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return
        entry = self.routes.get((method, path))
        if entry is None:
            entry = self._prefix_route(method, path)
        if entry is None:
            if any(p == path for (_, p) in self.routes):
                raise MethodNotAllowed()
            raise NotFound(f"No route {path}.")
        handler, any_state = entry
        key = self.authenticate(scope)
        if tally is not None:
            tally.team_id, tally.api_key_id = key.team_id, key.api_key_id
        if not any_state:
            self.check_state(key)
        await handler(scope, receive, send, key, tally)

    def _is_operator(self, scope: Scope) -> bool:
        """The request carries the metrics token (configured, and compared in constant time)."""
        token = self.config.metrics_token
        if token is None:
            return False
        given = header(scope, b"authorization") or ""
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def _prefix_route(self, method: str, path: str) -> tuple[Handler, bool] | None:
        # Routes registered with a trailing "/" match any sub-path (e.g. /v1/models/{id}).
        for (m, p), entry in self.routes.items():
            if m == method and p.endswith("/") and path.startswith(p) and len(path) > len(p):
                return entry
        return None

    def authenticate(self, scope: Scope) -> KeyRecord:
        # The common case, on the header's bytes: exactly "Bearer ", the key's prefix and a
        # secret's length, digested as it came (no decode, strip or regex) and found among the
        # hot keys. A hit needs no check of the secret's characters: only digests of stored
        # secrets are cached, and a stored secret is well formed (``Replica.cached``). Anything
        # else (a miss too) takes the general path below, which checks the shape, reads the
        # store, and says why it refuses.
        for name, value in scope["headers"]:
            if name == b"authorization":
                if len(value) == self._bearer_length and value.startswith(self._bearer_prefix):
                    # keysecrets.digest_raw, inlined: one Python call less per request.
                    record = self.replica.cached(
                        _DIGEST(value[_BEARER_LENGTH:]).digest(), self._clock
                    )
                    if record is not None:
                        return record
                break
        return self._authenticate(scope)

    def _authenticate(self, scope: Scope) -> KeyRecord:
        authorization = header(scope, b"authorization")
        if not authorization:
            raise Unauthenticated.no_credentials()
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        prefix = self.config.api_key_prefix
        if scheme.lower() != "bearer" or not keysecrets.looks_like(token, prefix):
            raise incorrect_key(None)
        record = self.replica.lookup(keysecrets.digest_raw(token.encode()), self._clock())
        if record is None:
            raise incorrect_key(keysecrets.redact(token, prefix))
        return record

    def check_state(self, key: KeyRecord) -> None:
        if key.disabled:
            raise PermissionDenied(f"The API key {key.redacted} is disabled.")
        # The common case: nothing that a time could end (no expiry, no spend block), so no
        # clock read and no three calls below (#11).
        if (
            key.expire_at is None
            and key.team_blocked_until is None
            and key.key_blocked_until is None
        ):
            return
        now = self._clock()
        if key.is_expired(now):
            raise PermissionDenied(f"The API key {key.redacted} has expired.")
        # Spend (keyplane.usage): the team's monthly limit, then the key's own budget.
        if key.team_blocked(now):
            raise PermissionDenied(
                f"Your team {key.team_id} has either used all available credits or reached its "
                "monthly spending limit. To continue making API requests, please purchase more "
                "credits or raise your spending limit."
            )
        if key.key_blocked(now):
            raise PermissionDenied(
                f"The API key {key.redacted} has spent its budget for this period. It works "
                "again when the period ends or its budget is raised."
            )

    async def _api_key_info(
        self, scope: Scope, receive: Receive, send: Send, key: KeyRecord, tally: Tally | None
    ) -> None:
        await send_json(
            send,
            200,
            {
                "acls": list(key.acl_strings),
                "api_key_blocked": key.key_blocked(self._clock()),
                "api_key_disabled": key.disabled,
                "api_key_id": key.api_key_id,
                "create_time": key.create_time,
                "modified_by": key.modified_by,
                "modify_time": key.modify_time,
                "name": key.name,
                "redacted_api_key": key.redacted,
                "team_blocked": key.team_blocked(self._clock()),
                "team_id": key.team_id,
                "user_id": key.user_id,
            },
        )

    async def _me(
        self, scope: Scope, receive: Receive, send: Send, key: KeyRecord, tally: Tally | None
    ) -> None:
        await send_json(
            send,
            200,
            {
                "user_id": key.user_id,
                "team_id": key.team_id,
                "team_blocked": key.team_blocked(self._clock()),
                "api_key": {
                    "redacted_api_key": key.redacted,
                    "api_key_id": key.api_key_id,
                    "blocked": key.key_blocked(self._clock()),
                    "disabled": key.disabled,
                },
            },
        )
