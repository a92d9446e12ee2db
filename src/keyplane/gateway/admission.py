"""Whether a request may go upstream: endpoint ACL → model exists (in this cluster) → model ACL →
the key's limits and the team × model limits, acquired in one atomic step.

Decides only: a refusal is raised as the domain error that says why (``PermissionDenied``,
``NotFound``, ``RateLimited`` with its quota headers); what it looks like on the wire is the
gateway's error map (``keyplane.gateway.http``).
"""

from __future__ import annotations

from dataclasses import dataclass

from keyplane.catalog import Catalog, CatalogModel
from keyplane.domain.errors import NotFound, PermissionDenied, RateLimited
from keyplane.gateway.replica import KeyRecord
from keyplane.ratelimit import Decision, Limiter, Quota, RequestLimit, TokenLimit
from keyplane.usage.meter import Tally

__all__ = ["Admission", "Limits", "limits_for", "quota_headers"]

_LIMITS_CACHE_SIZE = 100_000
_NO_LIMITS = Decision(True, 0.0, None, None, None)


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


#: Per kind of quota: the names of its limit, remaining and reset headers, encoded once.
_QUOTA_NAMES = {
    kind: tuple(f"x-ratelimit-{what}-{kind}".encode() for what in ("limit", "remaining", "reset"))
    for kind in ("requests", "tokens")
}


def quota_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    for kind, quota in (("requests", decision.requests), ("tokens", decision.tokens)):
        if quota is None:
            continue
        q: Quota = quota
        limit, remaining, reset = _QUOTA_NAMES[kind]
        headers += [
            (limit, b"%d" % q.limit),
            (remaining, b"%d" % (q.remaining if q.remaining > 0 else 0)),
            (reset, b"%.3fs" % q.reset_after),
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


class Admission:
    """The checks of one cluster's gateway, over its catalog and its limiter."""

    def __init__(self, catalog: Catalog, limiter: Limiter, cluster: str) -> None:
        self.catalog = catalog
        self.limiter = limiter
        self.cluster = cluster
        self._limits: dict[tuple[str, int, str], Limits] = {}

    def check_endpoint(self, key: KeyRecord, endpoint: str) -> None:
        if not key.acls.allows_endpoint(endpoint):
            raise PermissionDenied(
                f"Access to the {endpoint} endpoint is denied. The API key {key.redacted} lacks "
                f"the ACL api-key:endpoint:{endpoint}."
            )

    def resolve(self, key: KeyRecord, requested: str, tally: Tally | None) -> CatalogModel:
        """The catalog model ``requested`` names, if it is served here and the key may use it."""
        model = self.catalog.resolve(requested, self.cluster)
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

    def visible_models(self, key: KeyRecord) -> list[str]:
        """The names (aliases too) of this cluster's models the key may use."""
        return [
            name
            for model in self.catalog.in_cluster(self.cluster)
            for name in (model.name, *model.spec.aliases)
            if key.acls.allows_model(name, model.name)
        ]

    async def admit(self, key: KeyRecord, model: CatalogModel | None) -> tuple[Limits, Decision]:
        """Acquire the request's limits, or raise ``RateLimited``."""
        # A key's limits change only with its revision: build them once per (revision, model).
        cache_key = (key.api_key_id, key.revision, model.name if model else "")
        limits = self._limits.get(cache_key)
        if limits is None:
            if len(self._limits) >= _LIMITS_CACHE_SIZE:
                self._limits.clear()
            limits = self._limits[cache_key] = limits_for(key, model)
        if not limits.requests and not limits.tokens:
            return limits, _NO_LIMITS
        decision = await self.limiter.acquire(limits.requests, limits.tokens)
        if not decision.allowed:
            raise _refusal(decision, key, model)
        return limits, decision
