"""``Client``: the Management API from synchronous code."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Literal, TypeVar

import httpx2

from keyplane.client import _rpc
from keyplane.client import types as t
from keyplane.client._base import Call, Retry, configure, decode, next_wait
from keyplane.client.errors import NotFound, PropagationTimeout, TransportError

T = TypeVar("T")
P = TypeVar("P")
Item = TypeVar("Item")


class Client:
    """A team's view of the Management API, with its management key.

    ``base_url`` and ``management_key`` default to ``KEYPLANE_BASE_URL`` and
    ``KEYPLANE_MANAGEMENT_KEY``. Team-scoped calls use ``team_id`` if given, else the team of the
    management key (asked once, through the validation RPC). ``transport`` replaces the HTTP
    transport (tests). Use it as a context manager, or call ``close()``.

    Works against keyplane and the hosted Management API alike; the few keyplane-only parts are
    marked as such.
    """

    def __init__(
        self,
        base_url: str | None = None,
        management_key: str | None = None,
        *,
        team_id: str | None = None,
        timeout: float = 30.0,
        retry: Retry | None = None,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        self._config = configure(base_url, management_key, timeout, retry)
        self._team_id = team_id
        self._http = httpx2.Client(
            base_url=self._config.base_url,
            headers=self._config.headers(),
            timeout=timeout,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"Client(base_url={self._config.base_url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing --------------------------------------------------------------------------------

    def _send(self, call: Call[T]) -> T:
        for attempt in itertools.count(1):
            try:
                response = self._http.send(call.request(self._http))
            except httpx2.TransportError as error:
                wait = next_wait(self._config.retry, call, attempt, None)
                if wait is None:
                    raise TransportError(f"{call.method} {call.path}: {error!r}") from error
            else:
                wait = next_wait(self._config.retry, call, attempt, response)
                if wait is None:
                    return decode(call, response)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _team(self, team_id: str | None) -> str:
        if team_id is not None:
            return team_id
        if self._team_id is None:
            self._team_id = self.validate_management_key().team_id
        return self._team_id

    def _walk(
        self,
        page: Callable[[str | None], Call[P]],
        items: Callable[[P], list[Item]],
        next_token: Callable[[P], str | None],
    ) -> Iterator[Item]:
        token: str | None = None
        while True:
            answer = self._send(page(token))
            yield from items(answer)
            token = next_token(answer)
            if not token:
                return

    # -- API keys --------------------------------------------------------------------------------

    def create_api_key(
        self,
        name: str,
        *,
        acls: Sequence[str] = (),
        qps: int | None = None,
        qpm: int | None = None,
        tpm: int | None = None,
        expire_time: datetime | None = None,
        budget: t.Budget | None = None,
        team_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> t.ApiKey:
        """CreateApiKey. The answer's ``api_key`` is the secret, shown this once.

        Each call sends a fresh ``Idempotency-Key`` (or ``idempotency_key``) and reuses it on its
        retries, so a retried create yields one key. (keyplane honours the header; a server that
        ignores it could create a second key on a retry.) ``budget`` is keyplane-only.
        """
        call = _rpc.create_api_key(
            self._team(team_id), name, acls, qps, qpm, tpm, expire_time, budget, idempotency_key
        )
        return self._send(call)

    def list_api_keys(
        self,
        *,
        team_id: str | None = None,
        page_size: int = 100,
        acl_filters: Sequence[str] = (),
        active_only: bool = False,
    ) -> Iterator[t.ApiKey]:
        """ListApiKeys, every page: the team's keys in creation order, fetched as you iterate."""
        team = self._team(team_id)
        return self._walk(
            lambda token: _rpc.list_api_keys(team, page_size, token, acl_filters, active_only),
            lambda page: page.api_keys,
            lambda page: page.pagination_token,
        )

    def list_api_keys_page(
        self,
        *,
        team_id: str | None = None,
        page_size: int | None = None,
        pagination_token: str | None = None,
        acl_filters: Sequence[str] = (),
        active_only: bool = False,
    ) -> t.ApiKeyPage:
        """ListApiKeys, one page (``page_size`` None: the server's default, all keys)."""
        call = _rpc.list_api_keys(
            self._team(team_id), page_size, pagination_token, acl_filters, active_only
        )
        return self._send(call)

    def get_api_key(self, api_key_id: str, *, team_id: str | None = None) -> t.ApiKey:
        """The key with this id, found through ListApiKeys (the API has no single-key read, so
        this pages through the team's keys). Raises ``NotFound``."""
        for key in self.list_api_keys(team_id=team_id, page_size=1000):
            if key.api_key_id == api_key_id:
                return key
        raise NotFound(404, "not-found", "Cannot find API key")

    def update_api_key(
        self,
        api_key_id: str,
        update: t.ApiKeyUpdate,
        *,
        form: Literal["key", "team"] = "key",
        team_id: str | None = None,
    ) -> t.ApiKey:
        """UpdateApiKey: change the fields set in ``update`` (the field mask is built from them).

        ``form="key"`` sends ``PUT /auth/api-keys/{id}``; ``form="team"`` the team-path form of
        the user's document, ``PUT /auth/teams/{teamId}/api-keys`` with the id in the body.
        """
        team = self._team(team_id) if form == "team" else None
        return self._send(_rpc.update_api_key(api_key_id, update, team))

    def rotate_api_key(
        self,
        api_key_id: str,
        *,
        expire_time: datetime | None = None,
        old_secret_expire_time: datetime | None = None,
    ) -> t.ApiKey:
        """RotateApiKey: a new secret (in the answer's ``api_key``), same id. The old secret works
        until ``old_secret_expire_time`` (server default: 24 h). Never retried: a resend would
        mint another secret."""
        return self._send(_rpc.rotate_api_key(api_key_id, expire_time, old_secret_expire_time))

    def delete_api_key(self, api_key_id: str) -> None:
        """DeleteApiKey (permanent). Retried like any idempotent call: a retry after a lost answer
        raises ``NotFound``, the key being gone either way."""
        self._send(_rpc.delete_api_key(api_key_id))

    def get_propagation(self, api_key_id: str) -> t.Propagation:
        """CheckApiKeyPropagation: per cluster host, whether the key's last change has arrived."""
        return self._send(_rpc.propagation(api_key_id))

    def wait_propagated(self, api_key_id: str, timeout: float = 30.0) -> t.Propagation:
        """Poll CheckApiKeyPropagation, backing off, until every cluster has the key's last
        change. Raises ``PropagationTimeout`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        last: t.Propagation | None = None
        while True:
            last = self.get_propagation(api_key_id)
            if last.done:
                return last
            left = deadline - time.monotonic()
            if left <= 0:
                raise PropagationTimeout(api_key_id, timeout, last)
            time.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)

    # -- catalog, identity, audit ----------------------------------------------------------------

    def list_models(self, *, team_id: str | None = None) -> list[t.ClusterConfig]:
        """ListModels: per cluster, the models the team may name in ``api-key:model:<name>``."""
        return self._send(_rpc.list_models(self._team(team_id))).cluster_configs

    def list_endpoint_acls(self, *, team_id: str | None = None) -> list[t.EndpointAcl]:
        """ListPossibleEndpointAcls: every ``api-key:endpoint:<name>`` with its description."""
        return self._send(_rpc.list_endpoint_acls(self._team(team_id))).acls

    def validate_management_key(self) -> t.ManagementKey:
        """The calling management key (its team, name, ACLs); needs no ACL."""
        return self._send(_rpc.validate_management_key())

    def list_audit_events(
        self,
        *,
        team_id: str | None = None,
        page_size: int = 100,
        time_from: datetime | None = None,
        time_to: datetime | None = None,
        query: str | None = None,
        user_id: str | None = None,
        descending: bool = False,
    ) -> Iterator[t.AuditEvent]:
        """ListAuditEvents, every page, oldest first (``descending``: newest first)."""
        team = self._team(team_id)
        return self._walk(
            lambda token: _rpc.list_audit_events(
                team, page_size, token, time_from, time_to, query, user_id, descending
            ),
            lambda page: page.events,
            lambda page: page.next_page_token,
        )

    # -- usage and spend -------------------------------------------------------------------------

    def get_usage(self, request: t.AnalyticsRequest, *, team_id: str | None = None) -> t.Usage:
        """Usage (``POST /v1/billing/teams/{teamId}/usage``): time series of ``usd``, requests or
        tokens, bucketed by ``time_unit`` and grouped as asked."""
        return self._send(_rpc.usage(self._team(team_id), request))

    def get_spending_limits(self, *, team_id: str | None = None) -> t.SpendingLimits:
        """The team's postpaid spending limits, in USD cents."""
        return self._send(_rpc.get_spending_limits(self._team(team_id))).spending_limits

    def set_spending_limit(self, cents: int, *, team_id: str | None = None) -> t.Cent:
        """Set the team's soft spending limit (USD cents); answers the limit now in force."""
        answer = self._send(_rpc.set_spending_limit(self._team(team_id), cents))
        return answer.this_bp_soft_spending_limit or t.Cent(val=cents)
