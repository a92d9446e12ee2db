"""What the sync and async clients share: configuration, the description of one call, the retry
policy, and turning an HTTP answer into a typed object or an exception. No I/O here."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx2
import msgspec

from keyplane import __version__
from keyplane.client.errors import APIError, ConfigurationError, error_for

T = TypeVar("T")

BASE_URL_ENV = "KEYPLANE_BASE_URL"
MANAGEMENT_KEY_ENV = "KEYPLANE_MANAGEMENT_KEY"
USER_AGENT = f"keyplane-python/{__version__}"
#: Statuses that say "try again later" without the request having had an effect.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Retry:
    """How idempotent calls are retried on 429, 502-504 and connection errors.

    ``attempts`` counts the first try. The wait before retry *n* is the server's Retry-After when
    it sent one (up to ``max_retry_after``; longer waits are not retried), else a random time up to
    ``backoff * 2**n`` capped at ``max_backoff`` ("full jitter").
    """

    attempts: int = 4
    backoff: float = 0.25
    max_backoff: float = 8.0
    max_retry_after: float = 60.0

    def delay(self, retry: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number ``retry`` (1-based), or None to give up."""
        if retry >= self.attempts:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**retry))  # noqa: S311


NO_RETRY = Retry(attempts=1)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One RPC: what to send, how to read the answer, and whether it may be sent twice."""

    method: str
    path: str
    result: type[T]
    idempotent: bool
    params: list[tuple[str, str]] = field(default_factory=list)
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def request(self, client: httpx2.Client | httpx2.AsyncClient) -> httpx2.Request:
        content = None if self.body is None else msgspec.json.encode(self.body)
        headers = dict(self.headers)
        if content is not None:
            headers.setdefault("content-type", "application/json")
        return client.build_request(
            self.method,
            self.path,
            params=tuple(self.params),
            content=content,
            headers=headers,
        )


def idempotency_key() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Config:
    base_url: str
    management_key: str
    timeout: float
    retry: Retry

    def headers(self) -> dict[str, str]:
        return {
            "authorization": f"Bearer {self.management_key}",
            "accept": "application/json",
            "user-agent": USER_AGENT,
        }


def configure(
    base_url: str | None, management_key: str | None, timeout: float, retry: Retry | None
) -> Config:
    base_url = base_url or os.environ.get(BASE_URL_ENV)
    management_key = management_key or os.environ.get(MANAGEMENT_KEY_ENV)
    if not base_url:
        raise ConfigurationError(f"no base URL: pass base_url= or set {BASE_URL_ENV}")
    if not management_key:
        raise ConfigurationError(
            f"no management key: pass management_key= or set {MANAGEMENT_KEY_ENV}"
        )
    return Config(base_url.rstrip("/"), management_key, timeout, retry or Retry())


_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def decode(call: Call[T], response: httpx2.Response) -> T:
    """The answer's typed body, or the exception its error envelope names."""
    if response.status_code >= 400:
        raise api_error(response)
    decoder = _decoders.get(call.result)
    if decoder is None:
        decoder = _decoders[call.result] = msgspec.json.Decoder(call.result, strict=False)
    try:
        result: T = decoder.decode(response.content)
    except msgspec.DecodeError as error:
        raise error_for(
            response.status_code, "internal", f"unexpected answer to {call.path}: {error}", None
        ) from None
    return result


class _Envelope(msgspec.Struct):
    code: str | None = None
    error: str | None = None


def api_error(response: httpx2.Response) -> APIError:
    try:
        envelope = msgspec.json.decode(response.content, type=_Envelope)
    except msgspec.DecodeError:
        envelope = _Envelope(error=response.text[:500] or response.reason_phrase)
    return error_for(
        response.status_code,
        envelope.code,
        envelope.error or response.reason_phrase,
        retry_after(response),
    )


def retry_after(response: httpx2.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(seconds, 0.0)


def next_wait(
    policy: Retry, call: Call[Any], attempt: int, response: httpx2.Response | None
) -> float | None:
    """Seconds to wait before sending ``call`` again after try number ``attempt`` got
    ``response`` (None: no answer at all), or None when it is not to be retried: only idempotent
    calls are, and only on no answer or a "later" status."""
    if not call.idempotent:
        return None
    if response is None:
        return policy.delay(attempt, None)
    if response.status_code not in RETRY_STATUSES:
        return None
    return policy.delay(attempt, retry_after(response))
