"""Wire shapes of the Management API, camelCase as on the wire; they feed /openapi.json.

Request models are deliberately lenient (``tpm`` as a string or an integer, ``acls`` or
``aclStrings``); ``keyplane.services`` does the real validation and names the field at fault.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel

from keyplane.domain.acl import ENDPOINTS, MAX_ACL_LENGTH, MAX_ACLS
from keyplane.domain.fieldmask import MASKABLE
from keyplane.domain.model import INT32_MAX, INT64_MAX, MAX_NAME_LENGTH
from keyplane.usage.periods import PERIODS


def wire_config(*required: str, extra: Literal["ignore", "allow"] = "ignore") -> ConfigDict:
    """camelCase on the wire; ``required``: what the schema lists as required (the services
    say so when one is missing, naming it)."""
    return ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra=extra,
        json_schema_extra={"required": list(required)} if required else None,
    )


class Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


# Strict, so values reach keyplane.services as sent: pydantic's lax int would turn ``true`` into 1
# and its lax bool would turn 1 into true, before the real validation could refuse them.
Number = StrictInt | StrictFloat | StrictStr | None
Flag = StrictBool | StrictStr | None

# What /openapi.json says of each field: exactly what keyplane.services accepts (checked by
# schemathesis against a live control plane, tests/e2e/test_openapi_truth.py), so a generated
# client's own validation agrees with the server's. The models stay lenient; the schema is the
# documented canonical form.


def _doc(schema: dict[str, Any], *, nullable: bool = False) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": [schema, {"type": "null"}]} if nullable else schema)


NAME_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_NAME_LENGTH,
    "pattern": r"\S",
    "description": f"1-{MAX_NAME_LENGTH} characters, not all blank.",
}
_ENDPOINT_NAMES = "|".join(["\\*", *sorted(ENDPOINTS)])
ACL_SCHEMA: dict[str, Any] = {
    "type": "string",
    "maxLength": MAX_ACL_LENGTH,
    "pattern": (
        f"^api-key:(endpoint:({_ENDPOINT_NAMES})|model:(\\*|[A-Za-z0-9][A-Za-z0-9._:/@+-]{{0,127}}))$"
    ),
    "examples": ["api-key:model:*", "api-key:endpoint:chat"],
}
ACLS_SCHEMA: dict[str, Any] = {"type": "array", "items": ACL_SCHEMA, "maxItems": MAX_ACLS}


def _whole(maximum: int) -> dict[str, Any]:
    """A JSON integer 0..``maximum``; a number with no fraction (``5.0``) is read as one too."""
    return {
        "anyOf": [
            {"type": "integer", "minimum": 0, "maximum": maximum},
            {"type": "number", "multipleOf": 1, "minimum": 0, "maximum": maximum},
        ]
    }


INT32_SCHEMA: dict[str, Any] = _whole(INT32_MAX)
#: An int64 travels as a decimal string (an integer is accepted too).


def _at_most(limit: int) -> str:
    """A regular expression of the decimal numbers 0..``limit`` (no leading zeros)."""
    digits = str(limit)
    shorter = f"0|[1-9][0-9]{{0,{len(digits) - 2}}}" if len(digits) > 1 else "0"
    same = []
    for i, d in enumerate(digits):
        rest = len(digits) - i - 1
        low = "1" if i == 0 else "0"
        if int(d) > int(low):
            tail = f"[0-9]{{{rest}}}" if rest else ""
            same.append(f"{digits[:i]}[{low}-{int(d) - 1}]{tail}")
    same.append(digits)
    return "^(" + "|".join([shorter, *same]) + ")$"


INT64_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": _at_most(INT64_MAX)},
        *_whole(INT64_MAX)["anyOf"],
    ]
}
TIMESTAMP_SCHEMA: dict[str, Any] = {
    "type": "string",
    "format": "date-time",
    "minLength": 20,
    "maxLength": 64,
    "description": "RFC 3339 with a zone, e.g. 2026-01-02T03:04:05Z; at most 9999-12-31T23:59:59Z.",
}
FLAG_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "boolean"}, {"enum": ["true", "false"]}]}
_PATH = "|".join(MASKABLE)
FIELD_MASK_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "string",
            "maxLength": 1024,
            "pattern": f"^ *({_PATH}) *( *, *({_PATH}) *)*$",
            "examples": ["name,qpm"],
        },
        {"type": "array", "items": {"enum": list(MASKABLE)}, "minItems": 1, "maxItems": 32},
        {
            "type": "object",
            "properties": {
                "paths": {
                    "type": "array",
                    "items": {"enum": list(MASKABLE)},
                    "minItems": 1,
                    "maxItems": 32,
                }
            },
            "required": ["paths"],
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
    ],
    "description": 'Which fields to update: "name,qpm", ["name", "qpm"] or {"paths": [...]}.',
}


BUDGET_DOC = (
    "keyplane's own (not in the hosted API): the key is refused while its spend in the current "
    "UTC period reaches this many USD cents."
)


class Budget(Wire):
    cents: Annotated[Number, _doc(INT64_SCHEMA)] = Field(
        default=None, description="USD cents, a string; required."
    )
    period: Annotated[str | None, _doc({"enum": list(PERIODS)}, nullable=True)] = Field(
        default=None, description="DAY, WEEK or MONTH (UTC); default MONTH."
    )

    model_config = wire_config("cents")


OptionalBudget = Annotated[
    Budget | None,
    WithJsonSchema({"anyOf": [{"$ref": "#/components/schemas/Budget"}, {"type": "null"}]}),
]


class CreateApiKeyRequest(Wire):
    model_config = wire_config("name")

    name: Annotated[str | None, _doc(NAME_SCHEMA)] = Field(default=None)
    acls: Annotated[list[str] | None, _doc(ACLS_SCHEMA, nullable=True)] = Field(
        default=None,
        validation_alias=AliasChoices("acls", "aclStrings", "acl_strings"),
        description="ACL strings, e.g. api-key:model:*, api-key:endpoint:chat.",
    )
    qps: Annotated[Number, _doc(INT32_SCHEMA, nullable=True)] = Field(
        default=None, description="Queries per second; null = none."
    )
    qpm: Annotated[Number, _doc(INT32_SCHEMA, nullable=True)] = Field(
        default=None, description="Queries per minute; null = none."
    )
    tpm: Annotated[Number, _doc(INT64_SCHEMA, nullable=True)] = Field(
        default=None, description="Tokens per minute, an integer string; null = none."
    )
    expire_time: Annotated[str | None, _doc(TIMESTAMP_SCHEMA, nullable=True)] = Field(
        default=None, description="RFC 3339; null = never."
    )
    budget: OptionalBudget = Field(default=None, description=BUDGET_DOC)


class ApiKeyPatch(Wire):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    api_key_id: Annotated[str | None, _doc({"type": "string"}, nullable=True)] = None
    name: Annotated[str | None, _doc(NAME_SCHEMA, nullable=True)] = Field(
        default=None, description="Required when masked."
    )
    acl_strings: Annotated[list[str] | None, _doc(ACLS_SCHEMA, nullable=True)] = Field(
        default=None, validation_alias=AliasChoices("aclStrings", "acls", "acl_strings")
    )
    qps: Annotated[Number, _doc(INT32_SCHEMA, nullable=True)] = None
    qpm: Annotated[Number, _doc(INT32_SCHEMA, nullable=True)] = None
    tpm: Annotated[Number, _doc(INT64_SCHEMA, nullable=True)] = None
    disabled: Annotated[Flag, _doc(FLAG_SCHEMA, nullable=True)] = None
    expire_time: Annotated[str | None, _doc(TIMESTAMP_SCHEMA, nullable=True)] = None
    budget: OptionalBudget = None


class ApiKeyPatchInTeam(ApiKeyPatch):
    """On the team path the key is named in the body: ``apiKeyId`` is required."""

    api_key_id: Annotated[str | None, _doc({"type": "string", "minLength": 1})] = None

    model_config = wire_config("apiKeyId", extra="allow")


FieldMask = Annotated[str | list[str] | dict[str, list[str]], WithJsonSchema(FIELD_MASK_SCHEMA)]


class UpdateApiKeyRequest(Wire):
    api_key: ApiKeyPatch = Field(description="The key with the new values of the masked fields.")
    field_mask: FieldMask


class UpdateApiKeyInTeamRequest(UpdateApiKeyRequest):
    api_key: ApiKeyPatchInTeam = Field(
        description="The key (apiKeyId required) with the new values of the masked fields."
    )


class RotateApiKeyRequest(Wire):
    expire_time: Annotated[str | None, _doc(TIMESTAMP_SCHEMA, nullable=True)] = Field(
        default=None, description="Of the new secret; default inherit."
    )
    old_secret_expire_time: Annotated[str | None, _doc(TIMESTAMP_SCHEMA, nullable=True)] = Field(
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
