"""The Management API: the FastAPI app factory and its routes.

Routes parse, call a use case in ``keyplane.services``, and render; no SQL and no rules here.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp

from keyplane import __version__, console
from keyplane.asgi import Message, Receive, Scope, Send, error_body, send_json_bytes
from keyplane.catalog import Catalog
from keyplane.control import errors, render, schemas
from keyplane.control.lenient import make_route_class
from keyplane.domain.errors import InvalidArgument
from keyplane.domain.timefmt import parse_ts
from keyplane.propagation import feed
from keyplane.propagation.notifier import ChangeNotifier
from keyplane.propagation.routes import feed_router
from keyplane.services import audit, idempotency, keys
from keyplane.services.auth import Principal, authenticate
from keyplane.services.context import Context
from keyplane.settings import Settings
from keyplane.usage import housekeeping as usage_housekeeping
from keyplane.usage.routes import billing_router, ingest_router

log = structlog.get_logger("keyplane.control")

JSON = "application/json"
#: Path parameters: snake_case in Python, the contract's camelCase on the wire.
TeamId = Annotated[str, Path(alias="teamId")]
ApiKeyId = Annotated[str, Path(alias="apiKeyId")]
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
#: An empty time is no bound.
TIME_BOUND: dict[str, Any] = {
    "anyOf": [schemas.TIMESTAMP_SCHEMA, {"type": "string", "maxLength": 0}, {"type": "null"}]
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorOut} for code in (400, 401, 403, 404, 413, 415)
}


def create_app(settings: Settings, ctx: Context, notifier: ChangeNotifier | None = None) -> FastAPI:
    """The Management API plus the internal feed. ``ctx.on_commit`` should feed ``notifier``."""
    catalog = Catalog(settings)
    notifier = notifier or ChangeNotifier()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        notifier.bind(asyncio.get_running_loop(), await _current_revision())
        tasks = [
            asyncio.create_task(_housekeeping()),
            asyncio.create_task(usage_housekeeping.run(ctx, settings.usage)),
        ]
        if not ctx.db.is_sqlite:
            from keyplane.storage.listen import listen_for_revisions

            tasks.append(asyncio.create_task(listen_for_revisions(ctx.db.url, notifier.notify)))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _current_revision() -> int:
        return await asyncio.to_thread(feed.current_revision, ctx)

    async def _housekeeping() -> None:
        # Commits from other processes (a second replica, the admin CLI) wake followers within
        # a second; the log is compacted now and then.
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            try:
                notifier.notify(await _current_revision())
                if ticks % 600 == 0:
                    await asyncio.to_thread(feed.compact, ctx, keep=settings.change_log_retention)
                if ticks % 60 == 0:
                    await asyncio.to_thread(idempotency.purge_expired, ctx)
            except Exception as error:  # keep the loop alive through a transient store error
                log.warning("housekeeping_failed", error=type(error).__name__)

    app = FastAPI(
        lifespan=lifespan,
        title="keyplane Management API",
        version=__version__,
        description="Create, list, update, rotate and delete inference API keys; "
        "see their propagation to every cluster.",
        responses=ERRORS,
        # /docs comes from the console, with its assets packaged here instead of a CDN's.
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.settings = settings
    errors.install(app)

    async def authenticate_first(request: Request) -> None:
        # Before the body is read: an unauthenticated caller costs no parsing work.
        found = await asyncio.to_thread(authenticate, ctx, request.headers.get("authorization"))
        request.state.principal = found

    router = APIRouter(route_class=make_route_class(settings.max_body_bytes, authenticate_first))

    def current_principal(
        request: Request,
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Principal:
        known: Principal | None = getattr(request.state, "principal", None)
        return known if known is not None else authenticate(ctx, authorization)

    # The checks do no I/O: async, so they cost no thread-pool hop.
    def rpc(name: str) -> Any:
        async def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
            principal.require(name)
            return principal

        return Depends(check)

    def team_check(name: str) -> Any:
        """The RPC's ACL, then the team in the path must be the key's own."""

        async def check(
            team_id: TeamId, principal: Annotated[Principal, Depends(current_principal)]
        ) -> Principal:
            principal.require(name)
            principal.require_team(team_id)
            return principal

        return Depends(check)

    @router.post(
        "/auth/teams/{teamId}/api-keys",
        responses={409: {"model": schemas.ErrorOut, "description": "Idempotency-Key reused"}},
        response_model=schemas.ApiKeyOut,
        response_model_exclude_none=True,
        summary="CreateApiKey",
        tags=["api-keys"],
    )
    def create_api_key(
        team_id: TeamId,
        body: schemas.CreateApiKeyRequest,
        principal: Annotated[Principal, team_check("CreateApiKey")],
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                json_schema_extra={"minLength": 1, "maxLength": keys.MAX_IDEMPOTENCY_KEY},
            ),
        ] = None,
    ) -> Response:
        spec = keys.parse_new_key(body.model_dump(by_alias=True, exclude_unset=True))
        created, replay = keys.create_key(
            ctx,
            principal=principal,
            team_id=team_id,
            spec=spec,
            idempotency_key=idempotency_key,
            render=lambda r: render.dump(render.api_key(r.key, r.secret)),
        )
        if replay is not None:
            return Response(replay, media_type=JSON, headers={"idempotent-replayed": "true"})
        assert created is not None
        return Response(render.dump(render.api_key(created.key, created.secret)), media_type=JSON)

    @router.get(
        "/auth/teams/{teamId}/api-keys",
        response_model=schemas.ListApiKeysResponse,
        response_model_exclude_none=True,
        summary="ListApiKeys",
        tags=["api-keys"],
    )
    def list_api_keys(
        team_id: TeamId,
        principal: Annotated[Principal, team_check("ListApiKeys")],
        page_size: Annotated[
            int | None, Query(alias="pageSize", json_schema_extra=PAGE_SIZE)
        ] = None,
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
        principal: Principal, api_key_id: str, body: schemas.UpdateApiKeyRequest, team: str | None
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

    @router.put(
        "/auth/api-keys/{apiKeyId}",
        response_model=schemas.ApiKeyOut,
        response_model_exclude_none=True,
        summary="UpdateApiKey",
        tags=["api-keys"],
    )
    def update_api_key(
        api_key_id: ApiKeyId,
        body: schemas.UpdateApiKeyRequest,
        principal: Annotated[Principal, rpc("UpdateApiKey")],
    ) -> schemas.ApiKeyOut:
        return _update(principal, api_key_id, body, None)

    @router.put(
        "/auth/teams/{teamId}/api-keys",
        response_model=schemas.ApiKeyOut,
        response_model_exclude_none=True,
        summary="UpdateApiKey (team path; the key is apiKey.apiKeyId)",
        tags=["api-keys"],
    )
    def update_api_key_in_team(
        team_id: TeamId,
        body: schemas.UpdateApiKeyInTeamRequest,
        principal: Annotated[Principal, team_check("UpdateApiKey")],
    ) -> schemas.ApiKeyOut:
        if not body.api_key.api_key_id:
            raise InvalidArgument("is required on this route", field="apiKey.apiKeyId")
        return _update(principal, body.api_key.api_key_id, body, team_id)

    @router.post(
        "/auth/api-keys/{apiKeyId}/rotate",
        response_model=schemas.ApiKeyOut,
        response_model_exclude_none=True,
        summary="RotateApiKey",
        tags=["api-keys"],
    )
    def rotate_api_key(
        api_key_id: ApiKeyId,
        principal: Annotated[Principal, rpc("RotateApiKey")],
        body: schemas.RotateApiKeyRequest | None = None,
    ) -> Response:
        fields = body.model_dump(by_alias=True, exclude_none=True) if body else {}
        rotated = keys.rotate_key(ctx, principal=principal, api_key_id=api_key_id, body=fields)
        return Response(render.dump(render.api_key(rotated.key, rotated.secret)), media_type=JSON)

    @router.delete(
        "/auth/api-keys/{apiKeyId}",
        response_model=schemas.Empty,
        summary="DeleteApiKey",
        tags=["api-keys"],
    )
    def delete_api_key(
        api_key_id: ApiKeyId,
        principal: Annotated[Principal, rpc("DeleteApiKey")],
    ) -> dict[str, Any]:
        keys.delete_key(ctx, principal=principal, api_key_id=api_key_id)
        return {}

    @router.get(
        "/auth/teams/{teamId}/models",
        response_model=schemas.ListModelsResponse,
        response_model_exclude_none=True,
        summary="ListModels",
        tags=["catalog"],
    )
    def list_models(
        team_id: TeamId,
        principal: Annotated[Principal, team_check("ListModels")],
    ) -> schemas.ListModelsResponse:
        return render.models(catalog)

    @router.get(
        "/auth/teams/{teamId}/endpoints",
        response_model=schemas.ListEndpointAclsResponse,
        summary="ListPossibleEndpointAcls",
        tags=["catalog"],
    )
    def list_endpoints(
        team_id: TeamId,
        principal: Annotated[Principal, team_check("ListPossibleEndpointAcls")],
    ) -> schemas.ListEndpointAclsResponse:
        return render.endpoint_acls()

    @router.get(
        "/auth/management-keys/validation",
        response_model=schemas.ManagementKeyOut,
        summary="ValidateManagementKey",
        tags=["management-keys"],
    )
    def validate_management_key(
        principal: Annotated[Principal, Depends(current_principal)],
    ) -> schemas.ManagementKeyOut:
        return render.management_key(principal.key)

    @router.get(
        "/audit/teams/{teamId}/events",
        response_model=schemas.ListAuditEventsResponse,
        response_model_exclude_none=True,
        summary="ListAuditEvents",
        tags=["audit"],
    )
    def list_audit_events(
        team_id: TeamId,
        principal: Annotated[Principal, team_check("ListAuditEvents")],
        page_size: Annotated[
            int | None, Query(alias="pageSize", json_schema_extra=PAGE_SIZE)
        ] = None,
        page_token: Annotated[
            str | None, Query(alias="pageToken", json_schema_extra=PAGE_TOKEN)
        ] = None,
        event_time_from: Annotated[
            str | None, Query(alias="eventTimeFrom", json_schema_extra=TIME_BOUND)
        ] = None,
        event_time_to: Annotated[
            str | None, Query(alias="eventTimeTo", json_schema_extra=TIME_BOUND)
        ] = None,
        query: Annotated[
            str | None, Query(alias="eventFilter.query", json_schema_extra={"maxLength": 256})
        ] = None,
        user_id: Annotated[
            str | None, Query(alias="eventFilter.userId", json_schema_extra={"maxLength": 64})
        ] = None,
        order_by: Annotated[
            str | None,
            Query(
                alias="orderBy", json_schema_extra={"enum": ["TIME_ASCENDING", "TIME_DESCENDING"]}
            ),
        ] = None,
    ) -> schemas.ListAuditEventsResponse:
        if order_by not in (None, "", "TIME_ASCENDING", "TIME_DESCENDING"):
            raise InvalidArgument("must be TIME_ASCENDING or TIME_DESCENDING", field="orderBy")
        page = audit.list_events(
            ctx,
            principal=principal,
            team_id=team_id,
            page_size=page_size,
            page_token=page_token,
            time_from=parse_ts(event_time_from, field="eventTimeFrom") if event_time_from else None,
            time_to=parse_ts(event_time_to, field="eventTimeTo") if event_time_to else None,
            text=query or None,
            user_id=user_id or None,
            descending=order_by == "TIME_DESCENDING",
        )
        return schemas.ListAuditEventsResponse(
            events=[render.audit_event(e) for e in page.events], next_page_token=page.next_token
        )

    @router.get(
        "/auth/api-keys/{apiKeyId}/propagation",
        response_model=schemas.PropagationResponse,
        summary="CheckApiKeyPropagation",
        tags=["api-keys"],
    )
    def check_propagation(
        api_key_id: ApiKeyId,
        principal: Annotated[Principal, rpc("CheckApiKeyPropagation")],
    ) -> schemas.PropagationResponse:
        status = feed.propagation_status(ctx, settings, principal=principal, api_key_id=api_key_id)
        return schemas.PropagationResponse(ic_propagation=status)

    @router.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(router)
    app.include_router(feed_router(ctx, notifier))
    app.include_router(ingest_router(ctx, settings))
    app.include_router(
        billing_router(
            ctx, settings, catalog, route_class=router.route_class, principal=current_principal
        )
    )
    console.install(app)

    app.add_middleware(AccessLog)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, less the 422 it lists everywhere: this API answers 400 for bad input."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


_ROUTINE_PATHS = ("/internal/", "/healthz")


class AccessLog:
    """One log line per request: method, path, status, time. Never headers or bodies, which may
    carry secrets. Plain ASGI: FastAPI's ``@app.middleware`` costs a fifth of a request here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500
        started = False

        async def sending(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except ClientDisconnect:
            status = 499  # gone mid-request: nothing to answer, and nothing went wrong here
        except Exception as error:
            # The error handler has answered already; re-raising (as Starlette does) would make
            # the server drop the client's keep-alive connection and log the trace twice.
            log.error("unhandled_error", path=scope["path"], exc_info=error)
            if status == 500 and not started:
                await send_json_bytes(sending, 500, error_body("internal", "Internal error."))
        finally:
            # Probes and the gateways' feed (a long-poll every few seconds, per gateway) are
            # routine: at debug, unless they failed.
            routine = status < 400 and scope["path"].startswith(_ROUTINE_PATHS)
            (log.debug if routine else log.info)(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                ms=round((time.perf_counter() - began) * 1000, 2),
            )
