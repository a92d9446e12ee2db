"""CreateApiKey, ListApiKeys, UpdateApiKey (both paths), RotateApiKey and DeleteApiKey."""

import re
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import Header, Query, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from keyplane.control import render, schemas
from keyplane.control.routing import (
    ApiKeyId,
    AppContext,
    Rpcs,
    TeamId,
    authenticated,
    context_of,
    fast_path,
    principal_of,
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


#: The body fields ``_plain_create_body`` takes as they are, and what each may hold besides null.
_PLAIN_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "qps": (int, float, str),
    "qpm": (int, float, str),
    "tpm": (int, float, str),
    "expireTime": (str,),
}


def _plain_create_body(data: Any) -> dict[str, Any] | None:
    """``CreateApiKeyRequest.model_validate(data).model_dump(by_alias=True, exclude_unset=True)``
    (the same fields, values and types) for the usual body: an object of the wire's own field
    names holding strings, numbers, a list of strings or null; None for anything else (another
    spelling of a field, a budget, an unknown field, another type), which pydantic takes."""
    if type(data) is not dict:
        return None
    out: dict[str, Any] = {}
    for name, value in data.items():
        if value is None:
            out[name] = None
            if name == "acls" or name in _PLAIN_FIELDS:
                continue
            return None
        if name == "acls":
            if type(value) is not list or any(type(acl) is not str for acl in value):
                return None
            out[name] = list(value)
            continue
        kinds = _PLAIN_FIELDS.get(name)
        if kinds is None or type(value) not in kinds:
            return None
        out[name] = value
    return out


def _create_body(data: Any) -> dict[str, Any] | None:
    """The create's fields, as pydantic's model gives them; None when the body does not validate
    (FastAPI then answers it)."""
    plain = _plain_create_body(data)
    if plain is not None:
        return plain
    try:
        body = schemas.CreateApiKeyRequest.model_validate(data, from_attributes=True)
    except ValidationError:
        return None
    return body.model_dump(by_alias=True, exclude_unset=True)


async def _create_now(request: Request) -> Response | None:
    """CreateApiKey without FastAPI's dependency solver (a fifth of a create's CPU): the same
    checks in the same order (the ACL and the team, then the body), the same use case and the
    same answer. A body that does not validate, or none, goes to FastAPI, which answers it."""
    principal = principal_of(request)
    team_id: str = request.path_params["teamId"]
    principal.require("CreateApiKey")
    principal.require_team(team_id)
    if not await request.body():
        return None
    fields = _create_body(await request.json())
    if fields is None:
        return None
    ctx = context_of(request)
    return await _create(ctx, principal, team_id, fields, request.headers.get("idempotency-key"))


async def _create(
    ctx: Context,
    principal: Principal,
    team_id: str,
    fields: dict[str, Any],
    idempotency_key: str | None,
) -> Response:
    spec = keys.parse_new_key(fields)
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


@rpcs.route(
    "POST",
    "/auth/teams/{teamId}/api-keys",
    "CreateApiKey",
    schemas.ApiKeyOut,
    responses={409: {"model": schemas.ErrorOut, "description": "Idempotency-Key reused"}},
)
@fast_path(_create_now)
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
    fields = body.model_dump(by_alias=True, exclude_unset=True)
    return await _create(ctx, principal, team_id, fields, idempotency_key)


#: A page size as FastAPI takes it without a doubt: plain digits, no sign, no leading zero.
_PLAIN_SIZE = re.compile(r"[1-9][0-9]{0,8}")


def _plain_list_query(query: bytes) -> tuple[int | None, str | None] | None:
    """(pageSize, paginationToken) of the usual query (each at most once, not empty, the size
    plain digits); None for anything else (another parameter, a filter, a repeat), which FastAPI
    takes."""
    size: int | None = None
    token: str | None = None
    seen: set[str] = set()
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name in seen or not value:
            return None
        seen.add(name)
        if name == "pageSize" and _PLAIN_SIZE.fullmatch(value):
            size = int(value)
        elif name == "paginationToken":
            token = value
        else:
            return None
    return size, token


async def _list_now(request: Request) -> Response | None:
    """ListApiKeys without FastAPI's dependency solver, for the usual query: the same checks in
    the same order (the caller, the ACL, the team), the same use case in a worker thread, and
    the same bytes. Any other query goes to FastAPI, which answers it."""
    ctx = context_of(request)
    principal = await authenticated(ctx, request.headers.get("authorization"))
    team_id: str = request.path_params["teamId"]
    principal.require("ListApiKeys")
    principal.require_team(team_id)
    query = _plain_list_query(request.scope["query_string"])
    if query is None:
        return None
    size, token = query

    def listed() -> bytes:
        page = keys.list_keys(
            ctx, principal=principal, team_id=team_id, page_size=size, page_token=token
        )
        return render.api_keys_page_json(page.keys, page.next_token)

    return Response(await run_in_threadpool(listed), media_type=JSON)


@rpcs.route("GET", "/auth/teams/{teamId}/api-keys", "ListApiKeys", schemas.ListApiKeysResponse)
@fast_path(_list_now)
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
) -> schemas.ListApiKeysResponse:
    page = keys.list_keys(
        ctx,
        principal=principal,
        team_id=team_id,
        page_size=page_size,
        page_token=pagination_token,
        acl_filters=acl_filters or (),
        active_only=active_only,
    )
    return schemas.ListApiKeysResponse(
        api_keys=[render.api_key(k) for k in page.keys], pagination_token=page.next_token
    )


def _update(
    ctx: Context,
    principal: Principal,
    api_key_id: str,
    body: schemas.UpdateApiKeyRequest,
    team: str | None,
) -> schemas.ApiKeyOut:
    patch = body.api_key.model_dump(by_alias=True, exclude_unset=True)
    key = keys.update_key(
        ctx,
        principal=principal,
        api_key_id=api_key_id,
        patch=patch,
        field_mask=body.field_mask,
        team_id=team,
    )
    return render.api_key(key)


@rpcs.route("PUT", "/auth/api-keys/{apiKeyId}", "UpdateApiKey", schemas.ApiKeyOut)
def update_api_key(
    api_key_id: ApiKeyId,
    body: schemas.UpdateApiKeyRequest,
    principal: Annotated[Principal, rpc("UpdateApiKey")],
    ctx: AppContext,
) -> schemas.ApiKeyOut:
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
) -> schemas.ApiKeyOut:
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
