"""Domain objects to wire shapes: timestamps as RFC 3339 ``Z``, ``tpm`` as a string."""

from __future__ import annotations

from collections.abc import Sequence
from json.encoder import encode_basestring

from keyplane.catalog import Catalog, CatalogModel
from keyplane.control import schemas
from keyplane.domain.acl import API_KEY_NAMESPACE, ENDPOINTS
from keyplane.domain.model import ApiKey, AuditEvent, ManagementKey
from keyplane.domain.timefmt import format_ts


def api_key(key: ApiKey, secret: str | None = None) -> schemas.ApiKeyOut:
    return schemas.ApiKeyOut(
        api_key_id=key.api_key_id,
        team_id=key.team_id,
        user_id=key.user_id,
        name=key.name,
        redacted_api_key=key.redacted,
        api_key=secret,
        create_time=format_ts(key.create_time),
        modify_time=format_ts(key.modify_time),
        modified_by=key.modified_by,
        disabled=key.disabled,
        expire_time=None if key.expire_time is None else format_ts(key.expire_time),
        qps=key.qps,
        qpm=key.qpm,
        tpm=None if key.tpm is None else str(key.tpm),
        acl_strings=list(key.acl_strings),
        budget=None
        if key.budget_cents is None
        else schemas.Budget(cents=str(key.budget_cents), period=key.budget_period),
    )


#: A string as a JSON string the way pydantic writes it (UTF-8 as is, ``"``, ``\\`` and the
#: control characters escaped, in lowercase hex): the json module's C encoder of strings.
_text = encode_basestring


def api_key_json(key: ApiKey, secret: str | None = None) -> bytes:
    """``dump(api_key(key, secret))``, the same bytes, written out directly instead of building
    and serializing the pydantic model (half the answer's cost: CreateApiKey and RotateApiKey
    answer it). As pydantic writes it: compact, fields in the model's order, nulls left out,
    UTF-8 as is (only ``"``, ``\\`` and the control characters escaped, as ``_text`` does)."""
    parts = [
        f'{{"apiKeyId":{_text(key.api_key_id)},"teamId":{_text(key.team_id)}',
        f',"userId":{_text(key.user_id)},"name":{_text(key.name)}',
        f',"redactedApiKey":{_text(key.redacted)}',
    ]
    if secret is not None:
        parts.append(f',"apiKey":{_text(secret)}')
    parts.append(
        f',"createTime":{_text(format_ts(key.create_time))}'
        f',"modifyTime":{_text(format_ts(key.modify_time))}'
        f',"modifiedBy":{_text(key.modified_by)},"disabled":{"true" if key.disabled else "false"}'
    )
    if key.expire_time is not None:
        parts.append(f',"expireTime":{_text(format_ts(key.expire_time))}')
    if key.qps is not None:
        parts.append(f',"qps":{int(key.qps)}')
    if key.qpm is not None:
        parts.append(f',"qpm":{int(key.qpm)}')
    if key.tpm is not None:
        parts.append(f',"tpm":{_text(str(key.tpm))}')
    parts.append(f',"aclStrings":[{",".join(map(_text, key.acl_strings))}]')
    if key.budget_cents is not None:
        period = "" if key.budget_period is None else f',"period":{_text(key.budget_period)}'
        parts.append(f',"budget":{{"cents":{_text(str(key.budget_cents))}{period}}}')
    parts.append("}")
    try:
        return "".join(parts).encode()
    except UnicodeEncodeError:  # a lone surrogate: pydantic refuses it, and says so its way
        return dump(api_key(key, secret))


def api_keys_page_json(keys: Sequence[ApiKey], token: str | None) -> bytes:
    """``dump(ListApiKeysResponse(...))``'s bytes, each key by ``api_key_json`` (the token is the
    server's own, ASCII)."""
    tail = "" if token is None else f',"paginationToken":{_text(token)}'
    return b'{"apiKeys":[' + b",".join(map(api_key_json, keys)) + f"]{tail}}}".encode()


def dump(model: schemas.Wire) -> bytes:
    return model.model_dump_json(by_alias=True, exclude_none=True).encode()


def management_key(key: ManagementKey) -> schemas.ManagementKeyOut:
    return schemas.ManagementKeyOut(
        api_key_id=key.key_id,
        team_id=key.team_id,
        scope_id=key.team_id,
        owner_user_id=key.owner_user_id,
        name=key.name,
        acls=list(key.acls),
        redacted_api_key=key.redacted,
        create_time=format_ts(key.create_time),
        modify_time=format_ts(key.modify_time),
    )


def _model(model: CatalogModel) -> schemas.ModelOut:
    spec = model.spec
    return schemas.ModelOut(
        name=spec.name,
        version=spec.version,
        aliases=list(spec.aliases),
        input_modalities=list(spec.input_modalities),
        output_modalities=list(spec.output_modalities),
        rps=str(spec.rps),
        rpm=str(spec.rpm),
        tpm=str(spec.tpm),
        prompt_text_token_price=spec.prices.prompt_text_token_price,
        completion_text_token_price=spec.prices.completion_text_token_price,
        image_price=spec.prices.image_price,
    )


def models(catalog: Catalog) -> schemas.ListModelsResponse:
    configs = []
    for cluster in catalog.clusters:
        present = catalog.in_cluster(cluster)
        configs.append(
            schemas.ClusterConfigOut(
                cluster_name=cluster,
                language_models=[_model(m) for m in present if m.spec.kind == "language"],
                image_generation_models=[_model(m) for m in present if m.spec.kind == "image"],
                embedding_models=[_model(m) for m in present if m.spec.kind == "embedding"],
            )
        )
    return schemas.ListModelsResponse(cluster_configs=configs)


def endpoint_acls() -> schemas.ListEndpointAclsResponse:
    return schemas.ListEndpointAclsResponse(
        acls=[
            schemas.EndpointAclOut(
                acl=f"{API_KEY_NAMESPACE}:endpoint:{name}",
                description=description,
                namespace=API_KEY_NAMESPACE,
                key="endpoint",
                value=name,
            )
            for name, description in ENDPOINTS.items()
        ]
    )


def audit_event(event: AuditEvent) -> schemas.AuditEventOut:
    return schemas.AuditEventOut(
        event_time=format_ts(event.event_time),
        event_id=event.event_id,
        description=event.description,
        user=event.user_id,
        operation=event.operation,
        entity_type=event.entity_type,
        entity_id=event.entity_id,
    )
