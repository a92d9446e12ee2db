"""``AsyncClient``: the Management API from asyncio code; the same calls as ``Client``, awaited."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
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


class AsyncClient:
    """``Client`` for asyncio: every RPC is a coroutine, the listings are async iterators.

    ``base_url`` and ``management_key`` default to ``KEYPLANE_BASE_URL`` and
    ``KEYPLANE_MANAGEMENT_KEY``; ``transport`` replaces the HTTP transport (tests). Use it as an
    async context manager, or call ``aclose()``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        management_key: str | None = None,
        *,
        team_id: str | None = None,
        timeout: float = 30.0,
        retry: Retry | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self._config = configure(base_url, management_key, timeout, retry)
        self._team_id = team_id
        self._http = httpx2.AsyncClient(
            base_url=self._config.base_url,
            headers=self._config.headers(),
            timeout=timeout,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"AsyncClient(base_url={self._config.base_url!r})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- plumbing --------------------------------------------------------------------------------

    async def _send(self, call: Call[T]) -> T:
        for attempt in itertools.count(1):
            try:
                response = await self._http.send(call.request(self._http))
            except httpx2.TransportError as error:
                wait = next_wait(self._config.retry, call, attempt, None)
                if wait is None:
                    raise TransportError(f"{call.method} {call.path}: {error!r}") from error
            else:
                wait = next_wait(self._config.retry, call, attempt, response)
                if wait is None:
                    return decode(call, response)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _team(self, team_id: str | None) -> str:
        if team_id is not None:
            return team_id
        if self._team_id is None:
            self._team_id = (await self.validate_management_key()).team_id
        return self._team_id

    async def _walk(
        self,
        page: Callable[[str | None], Call[P]],
        items: Callable[[P], list[Item]],
        next_token: Callable[[P], str | None],
    ) -> AsyncIterator[Item]:
        token: str | None = None
        while True:
            answer = await self._send(page(token))
            for item in items(answer):
                yield item
            token = next_token(answer)
            if not token:
                return

    # -- API keys --------------------------------------------------------------------------------

    async def create_api_key(
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
        """CreateApiKey; see ``Client.create_api_key``."""
        call = _rpc.create_api_key(
            await self._team(team_id),
            name,
            acls,
            qps,
            qpm,
            tpm,
            expire_time,
            budget,
            idempotency_key,
        )
        return await self._send(call)

    async def list_api_keys(
        self,
        *,
        team_id: str | None = None,
        page_size: int = 100,
        acl_filters: Sequence[str] = (),
        active_only: bool = False,
    ) -> AsyncIterator[t.ApiKey]:
        """ListApiKeys, every page, as an async iterator."""
        team = await self._team(team_id)
        async for key in self._walk(
            lambda token: _rpc.list_api_keys(team, page_size, token, acl_filters, active_only),
            lambda page: page.api_keys,
            lambda page: page.pagination_token,
        ):
            yield key

    async def list_api_keys_page(
        self,
        *,
        team_id: str | None = None,
        page_size: int | None = None,
        pagination_token: str | None = None,
        acl_filters: Sequence[str] = (),
        active_only: bool = False,
    ) -> t.ApiKeyPage:
        """ListApiKeys, one page."""
        call = _rpc.list_api_keys(
            await self._team(team_id), page_size, pagination_token, acl_filters, active_only
        )
        return await self._send(call)

    async def get_api_key(self, api_key_id: str, *, team_id: str | None = None) -> t.ApiKey:
        """The key with this id, found through ListApiKeys; see ``Client.get_api_key``."""
        async for key in self.list_api_keys(team_id=team_id, page_size=1000):
            if key.api_key_id == api_key_id:
                return key
        raise NotFound(404, "not-found", "Cannot find API key")

    async def update_api_key(
        self,
        api_key_id: str,
        update: t.ApiKeyUpdate,
        *,
        form: Literal["key", "team"] = "key",
        team_id: str | None = None,
    ) -> t.ApiKey:
        """UpdateApiKey; see ``Client.update_api_key``."""
        team = await self._team(team_id) if form == "team" else None
        return await self._send(_rpc.update_api_key(api_key_id, update, team))

    async def rotate_api_key(
        self,
        api_key_id: str,
        *,
        expire_time: datetime | None = None,
        old_secret_expire_time: datetime | None = None,
    ) -> t.ApiKey:
        """RotateApiKey (never retried); see ``Client.rotate_api_key``."""
        call = _rpc.rotate_api_key(api_key_id, expire_time, old_secret_expire_time)
        return await self._send(call)

    async def delete_api_key(self, api_key_id: str) -> None:
        """DeleteApiKey (permanent)."""
        await self._send(_rpc.delete_api_key(api_key_id))

    async def get_propagation(self, api_key_id: str) -> t.Propagation:
        """CheckApiKeyPropagation."""
        return await self._send(_rpc.propagation(api_key_id))

    # The same signature as Client.wait_propagated; the deadline also bounds the polling itself.
    async def wait_propagated(self, api_key_id: str, timeout: float = 30.0) -> t.Propagation:  # noqa: ASYNC109
        """Poll CheckApiKeyPropagation with backoff until done; ``PropagationTimeout`` after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            last = await self.get_propagation(api_key_id)
            if last.done:
                return last
            left = deadline - time.monotonic()
            if left <= 0:
                raise PropagationTimeout(api_key_id, timeout, last)
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)

    # -- catalog, identity, audit ----------------------------------------------------------------

    async def list_models(self, *, team_id: str | None = None) -> list[t.ClusterConfig]:
        """ListModels."""
        return (await self._send(_rpc.list_models(await self._team(team_id)))).cluster_configs

    async def list_endpoint_acls(self, *, team_id: str | None = None) -> list[t.EndpointAcl]:
        """ListPossibleEndpointAcls."""
        return (await self._send(_rpc.list_endpoint_acls(await self._team(team_id)))).acls

    async def validate_management_key(self) -> t.ManagementKey:
        """The calling management key; needs no ACL."""
        return await self._send(_rpc.validate_management_key())

    async def list_audit_events(
        self,
        *,
        team_id: str | None = None,
        page_size: int = 100,
        time_from: datetime | None = None,
        time_to: datetime | None = None,
        query: str | None = None,
        user_id: str | None = None,
        descending: bool = False,
    ) -> AsyncIterator[t.AuditEvent]:
        """ListAuditEvents, every page, as an async iterator."""
        team = await self._team(team_id)
        async for event in self._walk(
            lambda token: _rpc.list_audit_events(
                team, page_size, token, time_from, time_to, query, user_id, descending
            ),
            lambda page: page.events,
            lambda page: page.next_page_token,
        ):
            yield event

    # -- usage and spend -------------------------------------------------------------------------

    async def get_usage(
        self, request: t.AnalyticsRequest, *, team_id: str | None = None
    ) -> t.Usage:
        """Usage; see ``Client.get_usage``."""
        return await self._send(_rpc.usage(await self._team(team_id), request))

    async def get_spending_limits(self, *, team_id: str | None = None) -> t.SpendingLimits:
        """The team's postpaid spending limits, in USD cents."""
        call = _rpc.get_spending_limits(await self._team(team_id))
        return (await self._send(call)).spending_limits

    async def set_spending_limit(self, cents: int, *, team_id: str | None = None) -> t.Cent:
        """Set the team's soft spending limit (USD cents)."""
        answer = await self._send(_rpc.set_spending_limit(await self._team(team_id), cents))
        return answer.this_bp_soft_spending_limit or t.Cent(val=cents)
