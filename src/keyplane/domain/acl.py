"""ACL strings: their grammar, validation on write, and matching at enforcement time.

API keys hold ``api-key:endpoint:<name>`` and ``api-key:model:<name>``; management keys hold
``team-token:endpoint:<RPC>``. The only wildcard is the literal ``*``. Deny by default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from keyplane.domain.errors import InvalidArgument

API_KEY_NAMESPACE = "api-key"
MANAGEMENT_NAMESPACE = "team-token"
WILDCARD = "*"
MAX_ACLS = 256
MAX_ACL_LENGTH = 300

#: Inference endpoint names an API key can be granted, with what each opens.
ENDPOINTS: dict[str, str] = {
    "chat": "Chat and vision models: /v1/chat/completions and /v1/responses",
    "sample": "Text completions: /v1/completions",
    "image": "Image generation models: /v1/images/generations",
    "embed": "Embedding models: /v1/embeddings",
    "models": "Model listing: /v1/models",
    "tokenize": "Tokenization: /v1/tokenize-text",
}

#: Management RPCs; a management key needs ``team-token:endpoint:<RPC>`` (or ``*``) to call one.
RPCS: tuple[str, ...] = (
    "CreateApiKey",
    "ListApiKeys",
    "UpdateApiKey",
    "RotateApiKey",
    "DeleteApiKey",
    "CheckApiKeyPropagation",
    "ListModels",
    "ListPossibleEndpointAcls",
    "ListAuditEvents",
    # keyplane.usage: the usage RPC and reading spending limits; setting them.
    "BillingRead",
    "BillingWrite",
)

# Model names as the catalogs of OpenAI-compatible servers spell them: "grok-4", "llama3:8b",
# "meta-llama/Llama-3.1-8B-Instruct". Colons are allowed, so the value is everything after the
# second colon of the ACL string.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")


@dataclass(frozen=True, slots=True)
class AclGrant:
    namespace: str
    key: str
    value: str

    def __str__(self) -> str:
        return f"{self.namespace}:{self.key}:{self.value}"


def parse_api_key_acl(text: object, *, field: str = "acls") -> AclGrant:
    """Validate one API-key ACL string; raise ``InvalidArgument`` naming what is wrong."""
    if not isinstance(text, str):
        raise InvalidArgument("each ACL must be a string", field=field)
    if len(text) > MAX_ACL_LENGTH:
        raise InvalidArgument(f"ACL is longer than {MAX_ACL_LENGTH} characters", field=field)
    parts = text.split(":", 2)
    if len(parts) != 3:
        raise InvalidArgument(
            f"{text!r} is not an ACL; expected api-key:endpoint:<name> or api-key:model:<name>",
            field=field,
        )
    namespace, key, value = parts
    if namespace != API_KEY_NAMESPACE:
        raise InvalidArgument(
            f"unknown ACL namespace {namespace!r} in {text!r}; the namespace is 'api-key'",
            field=field,
        )
    if key == "endpoint":
        if value != WILDCARD and value not in ENDPOINTS:
            known = ", ".join(sorted(ENDPOINTS))
            raise InvalidArgument(
                f"unknown endpoint {value!r} in {text!r}; known endpoints: {known}, or *",
                field=field,
            )
    elif key == "model":
        if value != WILDCARD and not _MODEL_NAME.fullmatch(value):
            raise InvalidArgument(f"{value!r} in {text!r} is not a model name", field=field)
    else:
        raise InvalidArgument(
            f"unknown ACL key {key!r} in {text!r}; the key is 'endpoint' or 'model'", field=field
        )
    return AclGrant(namespace, key, value)


def normalize_api_key_acls(values: object, *, field: str = "acls") -> tuple[str, ...]:
    """Validate a list of ACL strings; keep the caller's order, drop exact duplicates."""
    if values is None:
        return ()
    if not isinstance(values, list):
        raise InvalidArgument("must be a list of ACL strings", field=field)
    if len(values) > MAX_ACLS:
        raise InvalidArgument(f"at most {MAX_ACLS} ACLs per key", field=field)
    seen: dict[str, None] = {}
    for item in values:
        seen[str(parse_api_key_acl(item, field=field))] = None
    return tuple(seen)


def parse_management_acl(text: str) -> AclGrant:
    parts = text.split(":", 2)
    if len(parts) != 3 or parts[0] != MANAGEMENT_NAMESPACE or parts[1] != "endpoint":
        raise InvalidArgument(
            f"{text!r} is not a management ACL; expected team-token:endpoint:<RPC>", field="acls"
        )
    if parts[2] != WILDCARD and parts[2] not in RPCS:
        raise InvalidArgument(
            f"unknown RPC {parts[2]!r}; known: {', '.join(RPCS)}, or *", field="acls"
        )
    return AclGrant(*parts)


def management_allows(acls: Iterable[str], rpc: str) -> bool:
    wanted = f"{MANAGEMENT_NAMESPACE}:endpoint:{rpc}"
    wildcard = f"{MANAGEMENT_NAMESPACE}:endpoint:{WILDCARD}"
    return any(a in (wanted, wildcard) for a in acls)


@dataclass(frozen=True, slots=True)
class CompiledAcls:
    """An API key's ACLs, prepared once per key version for O(1) checks on the hot path."""

    all_endpoints: bool
    endpoints: frozenset[str]
    all_models: bool
    models: frozenset[str]

    @classmethod
    def compile(cls, acls: Iterable[str]) -> CompiledAcls:
        endpoints: set[str] = set()
        models: set[str] = set()
        for acl in acls:
            parts = acl.split(":", 2)
            if len(parts) != 3 or parts[0] != API_KEY_NAMESPACE:
                continue  # deny by default: whatever is not understood grants nothing
            if parts[1] == "endpoint":
                endpoints.add(parts[2])
            elif parts[1] == "model":
                models.add(parts[2])
        return cls(
            all_endpoints=WILDCARD in endpoints,
            endpoints=frozenset(endpoints - {WILDCARD}),
            all_models=WILDCARD in models,
            models=frozenset(models - {WILDCARD}),
        )

    def allows_endpoint(self, endpoint: str) -> bool:
        return self.all_endpoints or endpoint in self.endpoints

    def allows_model(self, requested: str, canonical: str) -> bool:
        """An alias passes if the ACL names the alias itself or its canonical model."""
        return self.all_models or requested in self.models or canonical in self.models
