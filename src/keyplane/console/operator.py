"""The operators' view: teams, management keys, and every gateway's applied revision, lag and
last seen. Signed in with an operator credential from ``keyplane admin operators create``; it
reads what ``keyplane admin`` prints, and changes nothing."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from keyplane.console import session as sess
from keyplane.console import web
from keyplane.domain.errors import KeyplaneError, Unauthenticated
from keyplane.domain.model import Operator
from keyplane.propagation import feed
from keyplane.services import admin

router = APIRouter(prefix=f"{web.PREFIX}/operator", include_in_schema=False)


@dataclass(frozen=True, slots=True)
class OperatorUser:
    operator: Operator
    session: sess.Session


def operator_user(request: Request) -> OperatorUser:
    found = web.sealer(request).open(sess.OPERATOR, request.cookies.get(sess.OPERATOR))
    if found is None:
        raise web.SignInRequired(sess.OPERATOR)
    _settings, ctx, _catalog = web.state(request)
    try:
        operator = admin.reauthenticate_operator(ctx, found.credential_id)
    except Unauthenticated:
        raise web.SignInRequired(sess.OPERATOR) from None
    return OperatorUser(operator, found)


Op = Annotated[OperatorUser, Depends(operator_user)]


@router.get("/sign-in")
def signin_form(request: Request) -> Response:
    return web.signin_page(request, "operator_signin.html")


@router.post("/sign-in")
async def signin(request: Request) -> Response:
    form = await web.read_signin_form(request)
    _settings, ctx, _catalog = web.state(request)
    try:
        operator = await run_in_threadpool(admin.authenticate_operator, ctx, form.get("credential"))
    except KeyplaneError:
        return web.signin_page(
            request,
            "operator_signin.html",
            error="That operator credential is not valid.",
            status=401,
        )
    target = f"{web.PREFIX}/operator"
    return web.start_session(request, sess.OPERATOR, operator.operator_id, "", target)


@router.post("/sign-out")
async def signout(request: Request) -> Response:
    return await web.end_session(request, sess.OPERATOR, f"{web.PREFIX}/operator/sign-in")


def _clusters(request: Request) -> dict[str, Any]:
    settings, ctx, _catalog = web.state(request)
    current, gateways = feed.cluster_view(ctx)
    configured = [c.name for c in settings.clusters]
    return {"revision": current, "gateways": gateways, "configured": configured}


@router.get("", response_class=HTMLResponse)
def overview(request: Request, user: Op) -> Response:
    _settings, ctx, _catalog = web.state(request)
    teams = admin.list_teams(ctx)
    keys = admin.list_management_keys(ctx)
    live = Counter(k.team_id for k in keys if k.revoke_time is None)
    names = {t.team_id: t.name for t in teams}
    return web.page(
        request,
        "operator.html",
        op=user,
        teams=teams,
        live_keys=live,
        keys=keys,
        team_names=names,
        **_clusters(request),
    )


@router.get("/clusters", response_class=HTMLResponse)
def clusters(request: Request, user: Op) -> Response:
    """The clusters table alone, polled by the page so lag and last seen stay current."""
    return web.page(request, "_operator_clusters.html", op=user, **_clusters(request))
