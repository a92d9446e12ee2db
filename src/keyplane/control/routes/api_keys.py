"""CreateApiKey, ListApiKeys, UpdateApiKey (both paths), RotateApiKey and DeleteApiKey."""

from typing import Annotated, Any

from fastapi import Header, Query, Response

from keyplane.control import render, schemas
from keyplane.control.routing import (
    ApiKeyId,
    AppContext,
    Rpcs,
    TeamId,
    rpc,
    team_rpc,
)
from keyplane.domain.errors import InvalidArgument
from keyplane.services import keys
from keyplane.services.auth import Principal
from keyplane.services.context import Context

JSON = "application/json"
#: What the query parameters' schemas say, beyond their types: the bounds keyplane.services checks.
PAGE_SIZE: dict[str, Any] = {"minimum": 1, "maximum": keys.MAX_PAGE_SIZE}
PAGE_TOKEN: dict[str, Any] = {"description": "A token from the previous page's answer, as is."}
ACL_FILTERS: dict[str, Any] = {
    "anyOf": [
        {
            "type": "array",
            "items": schemas.ACL_SCHEMA,
            "maxItems": keys.MAX_ACL_FILTERS,
        },
        {"type": "null"},
    ]
}

rpcs = Rpcs("api-keys")


def _key_with_secret(made: keys.KeyWithSecret) -> bytes:
    return render.api_key_json(made.key, made.secret)


@rpcs.route(
    "POST",
    "/auth/teams/{teamId}/api-keys",
    "CreateApiKey",
    schemas.ApiKeyOut,
    responses={409: {"model": schemas.ErrorOut, "description": "Idempotency-Key reused"}},
)
async def create_api_key(
    team_id: TeamId,
    body: schemas.CreateApiKeyRequest,
    principal: Annotated[Principal, team_rpc("CreateApiKey")],
    ctx: AppContext,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            json_schema_extra={"minLength": 1, "maxLength": keys.MAX_IDEMPOTENCY_KEY},
        ),
    ] = None,
) -> Response:
    spec = keys.parse_new_key(body.model_dump(by_alias=True, exclude_unset=True))
    created, replay = await ctx.writing(
        lambda: keys.create_key(
            ctx,
            principal=principal,
            team_id=team_id,
            spec=spec,
            idempotency_key=idempotency_key,
            render=_key_with_secret,
        )
    )
    if replay is not None:
        return Response(replay, media_type=JSON, headers={"idempotent-replayed": "true"})
    assert created is not None
    return Response(_key_with_secret(created), media_type=JSON)


@rpcs.route("GET", "/auth/teams/{teamId}/api-keys", "ListApiKeys", schemas.ListApiKeysResponse)
def list_api_keys(
    team_id: TeamId,
    principal: Annotated[Principal, team_rpc("ListApiKeys")],
    ctx: AppContext,
    page_size: Annotated[int | None, Query(alias="pageSize", json_schema_extra=PAGE_SIZE)] = None,
    pagination_token: Annotated[
        str | None, Query(alias="paginationToken", json_schema_extra=PAGE_TOKEN)
    ] = None,
    acl_filters: Annotated[
        list[str] | None, Query(alias="aclFilters", json_schema_extra=ACL_FILTERS)
    ] = None,
    active_only: Annotated[bool, Query(alias="activeOnly")] = False,
) -> Response:
    page = keys.list_keys(
        ctx,
        principal=principal,
        team_id=team_id,
        page_size=page_size,
        page_token=pagination_token,
        acl_filters=acl_filters or (),
        active_only=active_only,
    )
    return Response(render.api_keys_page_json(page.keys, page.next_token), media_type=JSON)


def _update(
    ctx: Context,
    principal: Principal,
    api_key_id: str,
    body: schemas.UpdateApiKeyRequest,
    team: str | None,
) -> Response:
    patch = body.api_key.model_dump(by_alias=True, exclude_unset=True)
    key = keys.update_key(
        ctx,
        principal=principal,
        api_key_id=api_key_id,
        patch=patch,
        field_mask=body.field_mask,
        team_id=team,
    )
    return Response(render.api_key_json(key), media_type=JSON)


@rpcs.route("PUT", "/auth/api-keys/{apiKeyId}", "UpdateApiKey", schemas.ApiKeyOut)
def update_api_key(
    api_key_id: ApiKeyId,
    body: schemas.UpdateApiKeyRequest,
    principal: Annotated[Principal, rpc("UpdateApiKey")],
    ctx: AppContext,
) -> Response:
    return _update(ctx, principal, api_key_id, body, None)


@rpcs.route(
    "PUT",
    "/auth/teams/{teamId}/api-keys",
    "UpdateApiKey (team path; the key is apiKey.apiKeyId)",
    schemas.ApiKeyOut,
)
def update_api_key_in_team(
    team_id: TeamId,
    body: schemas.UpdateApiKeyInTeamRequest,
    principal: Annotated[Principal, team_rpc("UpdateApiKey")],
    ctx: AppContext,
) -> Response:
    if not body.api_key.api_key_id:
        raise InvalidArgument("is required on this route", field="apiKey.apiKeyId")
    return _update(ctx, principal, body.api_key.api_key_id, body, team_id)


@rpcs.route("POST", "/auth/api-keys/{apiKeyId}/rotate", "RotateApiKey", schemas.ApiKeyOut)
def rotate_api_key(
    api_key_id: ApiKeyId,
    principal: Annotated[Principal, rpc("RotateApiKey")],
    ctx: AppContext,
    body: schemas.RotateApiKeyRequest | None = None,
) -> Response:
    fields = body.model_dump(by_alias=True, exclude_none=True) if body else {}
    rotated = keys.rotate_key(ctx, principal=principal, api_key_id=api_key_id, body=fields)
    return Response(_key_with_secret(rotated), media_type=JSON)


@rpcs.route(
    "DELETE", "/auth/api-keys/{apiKeyId}", "DeleteApiKey", schemas.Empty, exclude_none=False
)
def delete_api_key(
    api_key_id: ApiKeyId,
    principal: Annotated[Principal, rpc("DeleteApiKey")],
    ctx: AppContext,
) -> dict[str, Any]:
    keys.delete_key(ctx, principal=principal, api_key_id=api_key_id)
    return {}
