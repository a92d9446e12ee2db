"""The team console: sign-in with a management key, API keys, catalog, audit log.

Every action goes through ``keyplane.services`` as the signed-in management key, with the same
RPC ACL check the Management API makes; the console has no powers of its own.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from keyplane.console import session as sess
from keyplane.console import usage, web
from keyplane.console.web import MAX_POLLED, Form, TeamUser, User, page, redirect
from keyplane.control import render
from keyplane.domain.errors import InvalidArgument, KeyplaneError, NotFound, PermissionDenied
from keyplane.domain.model import ApiKey
from keyplane.domain.timefmt import format_ts, parse_ts
from keyplane.propagation import feed
from keyplane.services import audit, keys
from keyplane.services.auth import authenticate

router = APIRouter(prefix=web.PREFIX, include_in_schema=False)

PAGE_SIZE = 50
#: htmx stops polling when an answer has this status.
STOP_POLLING = 286


# -- sign-in -------------------------------------------------------------------------------------


@router.get("")
@router.get("/")
def home(request: Request) -> Response:
    signed_in = web.sealer(request).open(sess.TEAM, request.cookies.get(sess.TEAM))
    return redirect(f"{web.PREFIX}/keys" if signed_in else f"{web.PREFIX}/sign-in")


@router.get("/sign-in")
def signin_form(request: Request) -> Response:
    return web.signin_page(request, "signin.html")


@router.post("/sign-in")
async def signin(request: Request) -> Response:
    form = await web.read_signin_form(request)
    _settings, ctx, _catalog = web.state(request)
    try:
        principal = await _in_thread(authenticate, ctx, f"Bearer {form.get('key')}")
    except KeyplaneError:
        return web.signin_page(
            request,
            "signin.html",
            error="That management key is not valid (unknown, revoked or mistyped).",
            status=401,
        )
    key = principal.key
    return web.start_session(request, sess.TEAM, key.key_id, key.team_id, f"{web.PREFIX}/keys")


@router.post("/sign-out")
async def signout(request: Request) -> Response:
    return await web.end_session(request, sess.TEAM, f"{web.PREFIX}/sign-in")


async def _in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args, **kwargs)


def posted(request: Request, form: Form, user: TeamUser) -> None:
    web.check_csrf(request, form, user.session.csrf)


# -- keys table ----------------------------------------------------------------------------------


def _acl_choices(request: Request) -> tuple[list[str], list[str]]:
    """Endpoint ACLs and model ACLs the team can grant, for pickers and filters."""
    _settings, _ctx, catalog = web.state(request)
    endpoints = [a.acl for a in render.endpoint_acls().acls]
    models = sorted({m.name for cluster in catalog.clusters for m in catalog.in_cluster(cluster)})
    return ["api-key:endpoint:*", *endpoints], [
        "api-key:model:*",
        *(f"api-key:model:{m}" for m in models),
    ]


def _state_of(key: ApiKey, now: datetime) -> str:
    if key.is_expired(now):
        return "expired"
    if key.disabled:
        return "disabled"
    if key.budget_blocked_until is not None and key.budget_blocked_until > now:
        return "over budget"
    return "active"


@dataclass(frozen=True, slots=True)
class KeyQuery:
    q: str
    acls: list[str]
    active: bool
    token: str

    def url(self, token: str | None = None) -> str:
        from urllib.parse import urlencode

        params: list[tuple[str, str]] = []
        if self.q:
            params.append(("q", self.q))
        params += [("acl", a) for a in self.acls]
        if self.active:
            params.append(("active", "1"))
        if token:
            params.append(("page", token))
        return f"{web.PREFIX}/keys" + (f"?{urlencode(params)}" if params else "")


@router.get("/keys", response_class=HTMLResponse)
def keys_page(
    request: Request,
    user: User,
    q: Annotated[str, Query(max_length=256)] = "",
    acl: Annotated[list[str] | None, Query(max_length=32)] = None,
    active: Annotated[str, Query(max_length=8)] = "",
    page_token: Annotated[str, Query(alias="page", max_length=2048)] = "",
    notice: Annotated[str, Query(max_length=32)] = "",
) -> Response:
    _settings, ctx, _catalog = web.state(request)
    query = KeyQuery(q.strip(), [a for a in (acl or []) if a], active == "1", page_token)
    error = ""
    found: list[ApiKey] = []
    next_token: str | None = None
    try:
        user.principal.require("ListApiKeys")
        listed = keys.list_keys(
            ctx,
            principal=user.principal,
            team_id=user.team_id,
            page_size=PAGE_SIZE,
            page_token=query.token or None,
            acl_filters=query.acls,
            active_only=query.active,
            name_contains=query.q or None,
        )
        found, next_token = listed.keys, listed.next_token
    except KeyplaneError as failure:
        error = failure.message
    endpoint_acls, model_acls = _acl_choices(request)
    values: dict[str, Any] = {
        "user": user,
        "keys": found,
        "query": query,
        "next_url": query.url(next_token) if next_token else "",
        "first_url": query.url() if query.token else "",
        "now": ctx.clock.now(),
        "state_of": _state_of,
        "error": error,
        "notice": {"deleted": "The key was deleted."}.get(notice, ""),
        "acl_options": endpoint_acls + model_acls,
        "can_poll": user.can("CheckApiKeyPropagation"),
        "can_usage": user.can("BillingRead"),
        "clusters": [c.host for c in web.state(request)[0].clusters],
    }
    template = "_keys_table.html" if web.is_htmx(request) else "keys.html"
    return page(request, template, **values)


def _propagation(request: Request, user: TeamUser, key_id: str) -> dict[str, bool] | None:
    settings, ctx, _catalog = web.state(request)
    try:
        return feed.propagation_status(ctx, settings, principal=user.principal, api_key_id=key_id)
    except NotFound:
        return None


@router.get("/keys/propagation", response_class=HTMLResponse)
def propagation_cells(
    request: Request,
    user: User,
    key_id: Annotated[list[str] | None, Query(alias="id", max_length=MAX_POLLED)] = None,
) -> Response:
    """Each listed key's propagation badges, as out-of-band swaps; stops polling once all true."""
    if not user.can("CheckApiKeyPropagation"):
        return Response(status_code=STOP_POLLING)
    settings, ctx, _catalog = web.state(request)
    cells = feed.propagation_statuses(
        ctx, settings, principal=user.principal, api_key_ids=(key_id or [])[:MAX_POLLED]
    )
    done = all(status is None or all(status.values()) for status in cells.values())
    response = page(request, "_propagation.html", cells=cells, oob=True)
    if done:
        response.status_code = STOP_POLLING
    return response


# -- create --------------------------------------------------------------------------------------


def _expire_input(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


def _form_values(key: ApiKey | None) -> dict[str, Any]:
    if key is None:
        return {
            "name": "",
            "acls": [],
            "qps": "",
            "qpm": "",
            "tpm": "",
            "expire": "",
            "budget": {"amount": "", "period": "MONTH"},
        }
    return {
        "name": key.name,
        "acls": list(key.acl_strings),
        "qps": "" if key.qps is None else str(key.qps),
        "qpm": "" if key.qpm is None else str(key.qpm),
        "tpm": "" if key.tpm is None else str(key.tpm),
        "expire": _expire_input(key.expire_time),
        "budget": {
            "amount": web.dollars(key.budget_cents),
            "period": key.budget_period or "MONTH",
        },
    }


def _from_form(form: Form) -> dict[str, Any]:
    return {
        "name": form.get("name"),
        "acls": form.all("acls") + [a for a in form.get("acl_other").split() if a],
        "qps": form.get("qps"),
        "qpm": form.get("qpm"),
        "tpm": form.get("tpm"),
        "expire": form.get("expire"),
        "budget": {"amount": form.get("budget"), "period": form.get("budget_period", "MONTH")},
    }


def _expire_wire(value: str) -> str | None:
    """The form's ``datetime-local`` (read as UTC) to RFC 3339; the service validates it."""
    if not value:
        return None
    return value + (":00Z" if len(value) == 16 else "Z") if "Z" not in value else value


def _limit(value: str) -> str | None:
    return value or None


def _budget(value: dict[str, str]) -> dict[str, str] | None:
    """The form's dollars and period as the API's budget object (cents); empty clears it."""
    if not value["amount"]:
        return None
    try:
        cents = web.cents(value["amount"])
    except InvalidArgument as failure:
        raise InvalidArgument(failure.message, field="budget") from None
    return {"cents": str(cents), "period": value["period"]}


def _wire(values: dict[str, Any]) -> dict[str, Any]:
    return {
        "budget": _budget(values["budget"]),
        "name": values["name"],
        "acls": values["acls"],
        "qps": _limit(values["qps"]),
        "qpm": _limit(values["qpm"]),
        "tpm": _limit(values["tpm"]),
        "expireTime": _expire_wire(values["expire"]),
    }


def _key_form(
    request: Request,
    user: TeamUser,
    template: str,
    *,
    values: dict[str, Any],
    errors: dict[str, str] | None = None,
    status: int = 200,
    **extra: Any,
) -> Response:
    endpoint_acls, model_acls = _acl_choices(request)
    custom = [a for a in values["acls"] if a not in endpoint_acls and a not in model_acls]
    return page(
        request,
        template,
        status=status,
        user=user,
        values=values,
        errors=errors or {},
        endpoint_acls=endpoint_acls,
        model_acls=model_acls,
        custom_acls=" ".join(custom),
        idem=secrets.token_urlsafe(16),
        **extra,
    )


@router.get("/keys/new", response_class=HTMLResponse)
def new_key_form(request: Request, user: User) -> Response:
    return _key_form(request, user, "key_new.html", values=_form_values(None))


@router.post("/keys", response_class=HTMLResponse)
async def create_key(request: Request, user: User) -> Response:
    form = await web.read_form(request)
    posted(request, form, user)
    values = _from_form(form)
    _settings, ctx, _catalog = web.state(request)

    def create() -> tuple[ApiKey, str]:
        user.principal.require("CreateApiKey")
        spec = keys.parse_new_key(_wire(values))
        created, replay = keys.create_key(
            ctx,
            principal=user.principal,
            team_id=user.team_id,
            spec=spec,
            idempotency_key=f"console:{form.get('idem')}" if form.get("idem") else None,
            render=lambda r: render.api_key_json(r.key, r.secret),
        )
        if replay is not None:
            answer = json.loads(replay)
            key = keys.get_key(ctx, principal=user.principal, api_key_id=answer["apiKeyId"])
            return key, str(answer["apiKey"])
        assert created is not None
        return created.key, created.secret

    try:
        key, secret = await _in_thread(create)
    except KeyplaneError as failure:
        return _key_form(
            request,
            user,
            "key_new.html",
            values=values,
            errors=web.field_errors(failure),
            status=400 if isinstance(failure, InvalidArgument) else 403,
        )
    return page(request, "key_secret.html", user=user, key=key, secret=secret, rotated=False)


# -- one key -------------------------------------------------------------------------------------


def _load(request: Request, user: TeamUser, key_id: str) -> ApiKey:
    _settings, ctx, _catalog = web.state(request)
    return keys.get_key(ctx, principal=user.principal, api_key_id=key_id)


def _detail(
    request: Request,
    user: TeamUser,
    key: ApiKey,
    *,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
    notice: str = "",
) -> Response:
    _settings, ctx, _catalog = web.state(request)
    return _key_form(
        request,
        user,
        "key_detail.html",
        values=values or _form_values(key),
        errors=errors,
        status=status,
        key=key,
        state=_state_of(key, ctx.clock.now()),
        notice=notice,
        propagation=_propagation(request, user, key.api_key_id)
        if user.can("CheckApiKeyPropagation")
        else None,
        **usage.usage_section(request, user, "24h", key.api_key_id),
    )


def _not_found(request: Request, user: TeamUser) -> Response:
    return page(
        request,
        "message.html",
        status=404,
        user=user,
        title="Not found",
        message="Cannot find API key",
    )


@router.get("/keys/{key_id}", response_class=HTMLResponse)
def key_detail(request: Request, user: User, key_id: str) -> Response:
    try:
        key = _load(request, user, key_id)
    except NotFound:
        return _not_found(request, user)
    return _detail(request, user, key)


#: Form field -> (field-mask path, how the current key shows it in the form).
MASKABLE = {
    "name": "name",
    "acls": "aclStrings",
    "qps": "qps",
    "qpm": "qpm",
    "tpm": "tpm",
    "expire": "expireTime",
    "budget": "budget",
}


@router.post("/keys/{key_id}", response_class=HTMLResponse)
async def edit_key(request: Request, user: User, key_id: str) -> Response:
    """Update exactly the fields the person changed (a field mask), so concurrent edits of other
    fields survive."""
    form = await web.read_form(request)
    posted(request, form, user)
    values = _from_form(form)
    _settings, ctx, _catalog = web.state(request)

    def update() -> tuple[ApiKey, list[str]]:
        current = keys.get_key(ctx, principal=user.principal, api_key_id=key_id)
        before = _form_values(current)
        changed = [
            f
            for f in MASKABLE
            if (sorted(values[f]) if f == "acls" else values[f])
            != (sorted(before[f]) if f == "acls" else before[f])
        ]
        if not changed:
            return current, []
        user.principal.require("UpdateApiKey")
        wire = _wire(values)
        patch = {
            "name": wire["name"],
            "aclStrings": wire["acls"],
            "qps": wire["qps"],
            "qpm": wire["qpm"],
            "tpm": wire["tpm"],
            "expireTime": wire["expireTime"],
            "budget": wire["budget"],
        }
        updated = keys.update_key(
            ctx,
            principal=user.principal,
            api_key_id=key_id,
            patch=patch,
            field_mask=",".join(MASKABLE[f] for f in changed),
        )
        return updated, changed

    try:
        key, changed = await _in_thread(update)
    except NotFound:
        return _not_found(request, user)
    except KeyplaneError as failure:
        key = await _in_thread(_load, request, user, key_id)
        return _detail(
            request,
            user,
            key,
            values=values,
            errors=web.field_errors(failure),
            status=400 if isinstance(failure, InvalidArgument) else 403,
        )
    notice = f"Saved: {', '.join(changed)}." if changed else "Nothing changed."
    return _detail(request, user, key, notice=notice)


@router.post("/keys/{key_id}/state", response_class=HTMLResponse)
async def set_state(request: Request, user: User, key_id: str) -> Response:
    form = await web.read_form(request)
    posted(request, form, user)
    disabled = form.get("disabled") == "true"
    _settings, ctx, _catalog = web.state(request)

    def update() -> ApiKey:
        user.principal.require("UpdateApiKey")
        return keys.update_key(
            ctx,
            principal=user.principal,
            api_key_id=key_id,
            patch={"disabled": disabled},
            field_mask="disabled",
        )

    try:
        key = await _in_thread(update)
    except NotFound:
        return _not_found(request, user)
    except KeyplaneError as failure:
        key = await _in_thread(_load, request, user, key_id)
        return _detail(request, user, key, errors=web.field_errors(failure), status=403)
    return _detail(request, user, key, notice="Disabled." if disabled else "Enabled.")


@router.post("/keys/{key_id}/rotate", response_class=HTMLResponse)
async def rotate(request: Request, user: User, key_id: str) -> Response:
    form = await web.read_form(request)
    posted(request, form, user)
    _settings, ctx, _catalog = web.state(request)
    raw = form.get("grace", "24")

    def rotate_it() -> keys.KeyWithSecret:
        user.principal.require("RotateApiKey")
        if not (raw.isascii() and raw.isdigit()) or int(raw) > 168:
            raise InvalidArgument(
                "must be a whole number of hours from 0 to 168", field="oldSecretExpireTime"
            )
        old_expire = ctx.clock.now() + timedelta(hours=int(raw))
        return keys.rotate_key(
            ctx,
            principal=user.principal,
            api_key_id=key_id,
            body={"oldSecretExpireTime": format_ts(old_expire)},
        )

    try:
        rotated = await _in_thread(rotate_it)
    except NotFound:
        return _not_found(request, user)
    except KeyplaneError as failure:
        key = await _in_thread(_load, request, user, key_id)
        return _detail(request, user, key, errors=web.field_errors(failure), status=400)
    return page(
        request,
        "key_secret.html",
        user=user,
        key=rotated.key,
        secret=rotated.secret,
        rotated=True,
        grace=int(raw),
    )


@router.get("/keys/{key_id}/delete", response_class=HTMLResponse)
def confirm_delete(request: Request, user: User, key_id: str) -> Response:
    try:
        key = _load(request, user, key_id)
    except NotFound:
        return _not_found(request, user)
    return page(request, "key_delete.html", user=user, key=key, error="")


@router.post("/keys/{key_id}/delete", response_class=HTMLResponse)
async def delete(request: Request, user: User, key_id: str) -> Response:
    form = await web.read_form(request)
    posted(request, form, user)
    _settings, ctx, _catalog = web.state(request)

    def delete_it() -> None:
        user.principal.require("DeleteApiKey")
        keys.delete_key(ctx, principal=user.principal, api_key_id=key_id)

    try:
        await _in_thread(delete_it)
    except NotFound:
        return _not_found(request, user)
    except PermissionDenied as failure:
        key = await _in_thread(_load, request, user, key_id)
        return page(
            request, "key_delete.html", status=403, user=user, key=key, error=failure.message
        )
    return redirect(f"{web.PREFIX}/keys?notice=deleted")


# -- catalog and audit ---------------------------------------------------------------------------


@router.get("/catalog", response_class=HTMLResponse)
def catalog_page(request: Request, user: User) -> Response:
    _settings, _ctx, catalog = web.state(request)
    error = ""
    models = None
    endpoints = None
    try:
        user.principal.require("ListModels")
        models = render.models(catalog)
    except PermissionDenied as failure:
        error = failure.message
    try:
        user.principal.require("ListPossibleEndpointAcls")
        endpoints = render.endpoint_acls()
    except PermissionDenied as failure:
        error = failure.message
    return page(request, "catalog.html", user=user, models=models, endpoints=endpoints, error=error)


def _ts_input(value: str, field: str) -> datetime | None:
    wire = _expire_wire(value)
    return None if wire is None else parse_ts(wire, field=field)


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    user: User,
    q: Annotated[str, Query(max_length=256)] = "",
    user_id: Annotated[str, Query(alias="user", max_length=64)] = "",
    time_from: Annotated[str, Query(alias="from", max_length=32)] = "",
    time_to: Annotated[str, Query(alias="to", max_length=32)] = "",
    order: Annotated[str, Query(max_length=16)] = "desc",
    page_token: Annotated[str, Query(alias="page", max_length=2048)] = "",
) -> Response:
    from urllib.parse import urlencode

    _settings, ctx, _catalog = web.state(request)
    filters = {"q": q, "user": user_id, "from": time_from, "to": time_to, "order": order}
    events: list[Any] = []
    next_url = ""
    errors: dict[str, str] = {}
    try:
        user.principal.require("ListAuditEvents")
        listed = audit.list_events(
            ctx,
            principal=user.principal,
            team_id=user.team_id,
            page_size=PAGE_SIZE,
            page_token=page_token or None,
            time_from=_ts_input(time_from, "from"),
            time_to=_ts_input(time_to, "to"),
            text=q or None,
            user_id=user_id or None,
            descending=order != "asc",
        )
        events = listed.events
        if listed.next_token:
            next_url = f"{web.PREFIX}/audit?" + urlencode(
                {**{k: v for k, v in filters.items() if v}, "page": listed.next_token}
            )
    except InvalidArgument as failure:
        errors = {failure.field or "": failure.message}
    except KeyplaneError as failure:
        errors = {"": failure.message}
    return page(
        request,
        "audit.html",
        user=user,
        events=events,
        filters=filters,
        next_url=next_url,
        errors=errors,
        paged=bool(page_token),
    )
