"""Wire shapes of the Management API, camelCase as on the wire; they feed /openapi.json.

Request models are deliberately lenient (``tpm`` as a string or an integer, ``acls`` or
``aclStrings``); ``keyplane.services`` does the real validation and names the field at fault.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)
from pydantic.alias_generators import to_camel


class Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


# Strict, so values reach keyplane.services as sent: pydantic's lax int would turn ``true`` into 1
# and its lax bool would turn 1 into true, before the real validation could refuse them.
Number = StrictInt | StrictFloat | StrictStr | None
Flag = StrictBool | StrictStr | None


BUDGET_DOC = (
    "keyplane's own (not in the hosted API): the key is refused while its spend in the current "
    "UTC period reaches this many USD cents."
)


class Budget(Wire):
    cents: StrictStr | StrictInt | None = Field(default=None, description="USD cents, a string.")
    period: str | None = Field(default=None, description="DAY, WEEK or MONTH (UTC); default MONTH.")


class CreateApiKeyRequest(Wire):
    name: str | None = Field(default=None, description="Required; 1-256 characters.")
    acls: list[str] | None = Field(
        default=None,
        validation_alias=AliasChoices("acls", "aclStrings", "acl_strings"),
        description="ACL strings, e.g. api-key:model:*, api-key:endpoint:chat.",
    )
    qps: Number = Field(default=None, description="Queries per second; null = none.")
    qpm: Number = Field(default=None, description="Queries per minute; null = none.")
    tpm: Number = Field(
        default=None, description="Tokens per minute, an integer string; null = none."
    )
    expire_time: str | None = Field(default=None, description="RFC 3339; null = never.")
    budget: Budget | None = Field(default=None, description=BUDGET_DOC)


class ApiKeyPatch(Wire):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    api_key_id: str | None = None
    name: str | None = None
    acl_strings: list[str] | None = Field(
        default=None, validation_alias=AliasChoices("aclStrings", "acls", "acl_strings")
    )
    qps: Number = None
    qpm: Number = None
    tpm: Number = None
    disabled: Flag = None
    expire_time: str | None = None
    budget: Budget | None = None


class UpdateApiKeyRequest(Wire):
    api_key: ApiKeyPatch = Field(description="The key with the new values of the masked fields.")
    field_mask: str | list[str] | dict[str, list[str]] = Field(
        description='Comma-separated paths, e.g. "name,qpm".'
    )


class RotateApiKeyRequest(Wire):
    expire_time: str | None = Field(default=None, description="Of the new secret; default inherit.")
    old_secret_expire_time: str | None = Field(
        default=None, description="When the old secret stops working; default now + 24 h, max 7 d."
    )


class ApiKeyOut(Wire):
    api_key_id: str
    team_id: str
    user_id: str
    name: str
    redacted_api_key: str
    api_key: str | None = Field(default=None, description="The secret: create and rotate only.")
    create_time: str
    modify_time: str
    modified_by: str
    disabled: bool
    expire_time: str | None = None
    qps: int | None = None
    qpm: int | None = None
    tpm: str | None = None
    acl_strings: list[str]
    budget: Budget | None = Field(default=None, description=BUDGET_DOC)


class ListApiKeysResponse(Wire):
    api_keys: list[ApiKeyOut]
    pagination_token: str | None = None


class Empty(Wire):
    pass


class PropagationResponse(Wire):
    ic_propagation: dict[str, bool]


class ModelOut(Wire):
    name: str
    version: str
    aliases: list[str]
    input_modalities: list[str]
    output_modalities: list[str]
    rps: str
    rpm: str
    tpm: str
    prompt_text_token_price: str | None = None
    completion_text_token_price: str | None = None
    image_price: str | None = None


class ClusterConfigOut(Wire):
    cluster_name: str
    language_models: list[ModelOut]
    image_generation_models: list[ModelOut]
    embedding_models: list[ModelOut]


class ListModelsResponse(Wire):
    cluster_configs: list[ClusterConfigOut]


class EndpointAclOut(Wire):
    acl: str
    description: str
    namespace: str
    key: str
    value: str


class ListEndpointAclsResponse(Wire):
    acls: list[EndpointAclOut]


class ManagementKeyOut(Wire):
    api_key_id: str
    team_id: str
    scope: Literal["SCOPE_TEAM"] = "SCOPE_TEAM"
    scope_id: str
    owner_user_id: str
    name: str
    acls: list[str]
    redacted_api_key: str
    create_time: str
    modify_time: str


class AuditEventOut(Wire):
    event_time: str
    event_id: str
    description: str
    user: str
    operation: str
    entity_type: str
    entity_id: str


class ListAuditEventsResponse(Wire):
    events: list[AuditEventOut]
    next_page_token: str | None = None


class ErrorOut(BaseModel):
    code: str = Field(examples=["invalid-argument"])
    error: str
